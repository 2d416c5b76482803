"""The one configuration object of a training run, and the catalogue of methods.

`TrainSpec` is validated on its own (ranges, known method, fusion allowed for the method);
whether the dataset exists and has the named modality is checked against the dataset
catalogue by `spec_errors_for_dataset`, because that depends on what is on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# The fusion names only (worker/training/fusion.py has the maths): importing that module would
# load torch into the API, which validates specs with this module.
FUSIONS: tuple[str, ...] = ("add", "concat", "outer")


@dataclass(frozen=True)
class MethodInfo:
    name: str
    title: str
    fusions: tuple[str, ...]
    description: str


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo(
            "mle",
            "Maximum likelihood (ours)",
            FUSIONS,
            "Eq. 2: −log Q(z|x,y) on complete samples (eq. 4) plus −log Q(z|x) on samples "
            "whose y is missing (eq. 5, marginalising y over the complete data).",
        ),
        MethodInfo(
            "lower_bound",
            "Lower bound (discard incomplete)",
            FUSIONS,
            "Eq. 4 on the complete samples only; samples with a missing modality are dropped.",
        ),
        MethodInfo(
            "zero_padding",
            "Zero padding",
            ("add", "concat"),
            "The missing modality's feature g(y) is set to zero, then eq. 4 on all samples. "
            "Not with outer product: φ(f, 0) = 0 would make the missing samples useless.",
        ),
    )
}

MethodName = Literal["mle", "lower_bound", "zero_padding"]
FusionName = Literal["add", "concat", "outer"]
ReferenceSetChoice = Literal["auto", "all_complete", "batch"]


class TrainSpec(BaseModel):
    """Everything that determines a run. Same spec and seed on CPU → same result."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=200, description="Dataset name, see GET /api/datasets")
    method: MethodName
    fusion: FusionName = "add"
    missing_modality: str = Field(
        min_length=1, max_length=100, description="The modality y that may be missing; the other one is x"
    )
    missing_rate: float = Field(ge=0.0, lt=1.0, description="Fraction of training samples whose y is removed")
    epochs: int = Field(30, ge=1, le=10_000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="Adam learning rate")
    batch_size: int = Field(64, ge=2, le=65_536)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    feature_dim: int = Field(64, ge=1, le=1024, description="k: size of f(x) and g(y)")
    hidden_dim: int = Field(128, ge=1, le=8192, description="Width of the MLP encoders")
    reference_set: ReferenceSetChoice = Field(
        "auto",
        description="S in eq. 5: every complete training sample, or the complete samples of the batch; "
        "auto picks all when that is cheap",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("fusion")
    @classmethod
    def _fusion_allowed_for_method(cls, fusion: str, info: ValidationInfo) -> str:
        method = info.data.get("method")
        if method in METHODS and fusion not in METHODS[method].fusions:
            allowed = ", ".join(METHODS[method].fusions)
            raise ValueError(f"fusion {fusion!r} is not available for method {method!r} (allowed: {allowed})")
        return fusion


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


def spec_errors_for_dataset(spec: TrainSpec, modalities: tuple[str, ...] | None) -> list[FieldError]:
    """What is wrong with `spec` for a dataset with these modalities (None: no such dataset)."""
    if modalities is None:
        return [FieldError("dataset", f"unknown dataset {spec.dataset!r}")]
    if spec.missing_modality not in modalities:
        return [
            FieldError(
                "missing_modality",
                f"dataset {spec.dataset!r} has no modality {spec.missing_modality!r} "
                f"(it has: {', '.join(modalities)})",
            )
        ]
    return []
