"""The one configuration object of a training run, and the catalogue of methods.

`TrainSpec` is validated on its own (ranges, known method, fusion allowed for the method);
whether the dataset exists and fits the spec (modality names, subjects) is checked against
the dataset catalogue by `spec_errors_for_dataset`, because that depends on what is on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .method_registry import MethodCatalogue, describe_unknown
from .plugins import FUSIONS, FusionName, MethodDescription
from .selection import DEFAULT_SELECTION_RULE, SelectionRule
from .two_view import DatasetInfo

# --- the choices a spec offers: each listed once, here --------------------------------------
# The API's schemas and catalogue (GET /api/choices, /api/methods), the sweeps and presets, the
# command line and the forms all read these. Named here rather than next to their code
# (fusion.py, encoders.py): those modules import torch, and the API and the worker's parent
# process import this one without loading torch (CUDA must be touched only inside the task).

# The fusions φ(f, g) the model implements (training/fusion.py), named where method descriptions
# are (training/plugins.py).
# torchvision backbones (training/encoders.py): trained end to end, or frozen feature extractors.
BackboneName = Literal["resnet34", "resnet50", "vgg16"]
BACKBONES: tuple[str, ...] = get_args(BackboneName)
# Encoders f and g: the MLP for feature vectors, CNNs for images (C, H, W).
EncoderName = Literal["mlp", "small_cnn", BackboneName]
ENCODERS: tuple[str, ...] = get_args(EncoderName)
IMAGE_ENCODERS = tuple(e for e in ENCODERS if e != "mlp")
PRETRAINABLE_ENCODERS = BACKBONES  # ImageNet weights exist for these
ReferenceSetChoice = Literal["auto", "all_complete", "batch"]
REFERENCE_SETS: tuple[str, ...] = get_args(ReferenceSetChoice)
SplitBy = Literal["group", "subject"]
SPLITS: tuple[str, ...] = get_args(SplitBy)
DeviceChoice = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(DeviceChoice)
# Numeric precision of the training steps (training/precision.py).
PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(PrecisionChoice)
# The paper's names for its two modalities; a preset maps them onto a dataset's modalities.
PAPER_MODALITIES = ("visual", "audio")


# The methods: every one registered through the entry-point group `missmod.methods` (the six
# built-in ones too), read from the registry when first used (training/method_registry.py).
METHODS: Mapping[str, MethodDescription] = MethodCatalogue()
# Kept for code that imported it: a method's description (training/plugins.py).
MethodInfo = MethodDescription


def known_method(name: str) -> str:
    """`name` if this process can offer the method, else ValueError saying why not."""
    if name not in METHODS:
        raise ValueError(describe_unknown(name))
    return name


def _listed_methods(schema: dict[str, Any]) -> None:
    # The schema (OpenAPI, generated clients, the fuzz test) lists the methods this process offers.
    schema["enum"] = list(METHODS)


# A method's name, checked against the registry (not a fixed list: plugins add names).
MethodName = Annotated[str, Field(min_length=1, max_length=40, description="A method, see GET /api/methods",
                                  json_schema_extra=_listed_methods),
                       AfterValidator(known_method)]
# A method's option: a name and a plain value (a form field, a sweep value, a CLI key=value).
OptionName = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")]
OptionValue = bool | int | float | str
# Methods that impute a missing modality in input space (meant for feature vectors, paper §3.4).
INPUT_IMPUTING_METHODS = ("ae1", "ae2")


class TrainSpec(BaseModel):
    """Everything that determines a run. Same spec and seed on CPU → same result."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=200, description="Dataset name, see GET /api/datasets")
    method: MethodName
    fusion: FusionName = "add"
    method_options: dict[OptionName, OptionValue] = Field(
        default_factory=dict, validate_default=True,  # a method's defaults are filled in and stored when none are given
        description="The method's own options (GET /api/methods: `options`), validated against its options model and "
                    "stored with their defaults; the built-in methods have none (theirs are the fields below)",
    )
    missing_modality: str = Field(
        min_length=1, max_length=100, description="The modality y that may be missing; the other one is x"
    )
    missing_rate: float = Field(ge=0.0, lt=1.0, description="Fraction of training samples whose y is removed")
    other_missing_rate: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Fraction of training samples that lose x instead (both modalities partly missing); "
        "0 is the paper's setting",
    )
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
    mle_stop_reference_gradient: bool = Field(
        False,
        description="mle only, an ablation: eq. 5 sends no gradient into g through the reference set S "
        "(g(y') detached); f and h still learn from it",
    )
    mle_freeze_class_offset: bool = Field(
        False,
        description="mle only, an ablation (add, concat): no gradient through the class offset "
        "c_z = LSE_{y'∈S} g(y')ᵀh(z) that eq. 5 adds to the x-only logits",
    )
    label_prior: Literal["empirical", "uniform"] = Field(
        "empirical",
        description="R_Z in eq. 4 and 5 (every method): the training labels' frequencies, as in the paper, "
        "or uniform (an ablation)",
    )
    selection_rule: SelectionRule = Field(
        DEFAULT_SELECTION_RULE,
        description="Which epoch the run reports (its test accuracy, confusion matrix and predictions): the best "
                    "validation accuracy, earliest (the default, as every run before this option) or latest epoch "
                    "among ties; the lowest validation loss; or the last epoch (docs/studies.md)",
    )
    split_by: SplitBy = Field(
        "group", description="Split 70/15/15 by group (video), or by subject for subject-independent results"
    )
    evaluate_missing: bool = Field(
        False, description="Also report test accuracy with the missing modality removed from every test sample"
    )
    imputer_epochs: int = Field(30, ge=1, le=10_000, description="ae1/ae2: epochs to fit the x → y imputer")
    self_training_rounds: int = Field(3, ge=1, le=100, description="ae2: rounds of imputer self-training")
    device: DeviceChoice = "auto"
    encoder: EncoderName = Field(
        "mlp",
        description="Encoders f and g: mlp (feature vectors), or a CNN trained end to end on images such as "
        "video frames and spectrograms: small_cnn (CPU-sized), resnet34, resnet50, vgg16 (torchvision)",
    )
    pretrained: bool = Field(
        False, description="Start resnet34/resnet50/vgg16 from ImageNet weights (read from the host's torch cache)"
    )
    precision: PrecisionChoice = Field(
        "auto",
        description="Numeric precision of the training steps: auto = mixed precision for CNN encoders on a GPU "
        "(bf16 where the GPU has it, else fp16 with a gradient scaler), fp32 for MLP encoders and on the CPU; the "
        "likelihood (eq. 4/5) is always computed in fp32",
    )
    compile: bool = Field(
        False, description="torch.compile the encoders (the first epoch pays for compiling; helps long GPU runs)"
    )
    deterministic: bool = Field(
        False,
        description="On a GPU, cuDNN's and cuBLAS's deterministic algorithms (no autotuning; somewhat slower), so "
                    "the same spec repeats closely on the same GPU and software; a few kernels without a "
                    "deterministic form still sum with atomics (docs/gpu-host.md). Changes nothing on the CPU, "
                    "which is deterministic already",
    )
    # 10: a ResNet-50 epoch on RAVDESS or eNTERFACE'05 (about 30,000 training segments) is ~470
    # steps at the default batch of 64, so ~47 points an epoch (still 23 at a batch of 128).
    log_every_steps: int = Field(
        10, ge=1, le=1_000_000,
        description="Log the per-step metrics (step/train_loss, the loss terms, step/lr, step/samples_per_second) "
                    "and the progress inside the epoch every this many optimiser steps (and at each epoch's last "
                    "step). Changes nothing in the training itself",
    )

    @field_validator("encoder")
    @classmethod
    def _encoder_fits_the_method(cls, encoder: str, info: ValidationInfo) -> str:
        if encoder == "mlp":
            return encoder
        method = info.data.get("method")
        if method in INPUT_IMPUTING_METHODS:
            raise ValueError(f"method {method!r} imputes the missing modality in input space, which is meant for "
                             f"feature vectors (paper §3.4): extract features with a frozen backbone and use encoder "
                             f"'mlp' on them")
        if info.data.get("reference_set") == "all_complete":
            raise ValueError(f"encoder {encoder!r} cannot use reference_set 'all_complete' (it would run g over every "
                             f"complete training image at each step); use 'batch' or 'auto'")
        return encoder

    @field_validator("pretrained")
    @classmethod
    def _pretrained_needs_a_backbone(cls, pretrained: bool, info: ValidationInfo) -> bool:
        encoder = info.data.get("encoder")
        if pretrained and encoder is not None and encoder not in PRETRAINABLE_ENCODERS:
            raise ValueError(f"encoder {encoder!r} has no pretrained weights (only {', '.join(PRETRAINABLE_ENCODERS)})")
        return pretrained

    @field_validator("fusion")
    @classmethod
    def _fusion_allowed_for_method(cls, fusion: str, info: ValidationInfo) -> str:
        method = info.data.get("method")
        if method in METHODS and fusion not in METHODS[method].fusions:
            allowed = ", ".join(METHODS[method].fusions)
            raise ValueError(f"fusion {fusion!r} is not available for method {method!r} (allowed: {allowed})")
        return fusion

    @field_validator("method_options")
    @classmethod
    def _options_of_the_method(cls, options: dict[str, OptionValue], info: ValidationInfo) -> dict[str, OptionValue]:
        method = info.data.get("method")
        if method not in METHODS:  # the method's own error names it
            return options
        return METHODS[method].validated_options(options)

    @field_validator("mle_stop_reference_gradient", "mle_freeze_class_offset")
    @classmethod
    def _ablations_of_mle(cls, value: bool, info: ValidationInfo) -> bool:
        method = info.data.get("method")
        if value and method is not None and method != "mle":
            raise ValueError(f"an ablation of mle's eq. 5, which method {method!r} does not use: set it only with "
                             f"method 'mle'")
        if value and info.field_name == "mle_freeze_class_offset" and info.data.get("fusion") == "outer":
            raise ValueError("with outer product the score is not separable, so eq. 5 has no class offset of its "
                             "own to freeze: use add or concat")
        return value

    @field_validator("other_missing_rate")
    @classmethod
    def _some_samples_stay_complete(cls, rate: float, info: ValidationInfo) -> float:
        missing_rate = info.data.get("missing_rate")
        if missing_rate is not None and missing_rate + rate >= 1.0:
            raise ValueError(f"missing_rate + other_missing_rate must be below 1 (complete samples are needed), "
                             f"got {missing_rate} + {rate}")
        return rate


# The ablation options, with the value that means the paper's method (and the code as it was
# before they existed). At that value they are left out of a checkpoint's fingerprint
# (training/checkpoint.py), so a run interrupted across an upgrade still resumes, and out of a
# comparison table's row labels.
ABLATION_DEFAULTS: dict[str, object] = {
    "mle_stop_reference_gradient": False,
    "mle_freeze_class_offset": False,
    "label_prior": "empirical",
}

# Options added after runs were recorded without them, with the value that means what every run
# did before: at that value they are left out of a checkpoint's fingerprint (an interrupted run
# resumes across the upgrade: training/checkpoint.py) and out of a comparison table's row labels, and
# a stored spec that lacks one reads as having it (backend/sweeps/analysis.py). The ablations above,
# the selection rule (training/selection.py), the precision and the deterministic switch.
DEFAULTS_OF_LATER_OPTIONS: dict[str, object] = {**ABLATION_DEFAULTS, "selection_rule": DEFAULT_SELECTION_RULE,
                                                "precision": "auto", "deterministic": False, "method_options": {}}


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


def spec_errors_for_dataset(spec: TrainSpec, info: DatasetInfo | None) -> list[FieldError]:
    """What is wrong with `spec` for this dataset (None: no such dataset)."""
    if info is None:
        return [FieldError("dataset", f"unknown dataset {spec.dataset!r}")]
    if info.error:
        return [FieldError("dataset", f"dataset {spec.dataset!r} cannot be used: {info.error}")]
    errors = []
    if spec.missing_modality not in info.modalities:
        errors.append(FieldError(
            "missing_modality",
            f"dataset {spec.dataset!r} has no modality {spec.missing_modality!r} (it has: {', '.join(info.modalities)})",
        ))
    if spec.split_by == "subject" and not info.has_subjects:
        errors.append(FieldError("split_by", f"dataset {spec.dataset!r} has no subjects to split by"))
    shapes = ", ".join(f"{m} {tuple(s)}" for m, s in info.shapes.items())
    if spec.encoder in IMAGE_ENCODERS and any(len(s) != 3 for s in info.shapes.values()):
        errors.append(FieldError("encoder", f"encoder {spec.encoder!r} takes images (channels, height, width); "
                                            f"dataset {spec.dataset!r} has {shapes}: use 'mlp'"))
    if spec.encoder == "mlp" and info.source == "video":
        errors.append(FieldError("encoder", f"dataset {spec.dataset!r} holds raw frames and spectrograms: choose "
                                            f"an image encoder ({', '.join(IMAGE_ENCODERS)}), or extract features "
                                            f"with a frozen backbone and train 'mlp' on those"))
    return errors
