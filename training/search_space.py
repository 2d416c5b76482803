"""Search spaces of a hyperparameter study (docs/studies.md): what a field of the spec may take
while a study searches, and each method's default space.

A distribution is one of four, named by `distribution`: `loguniform` and `uniform` (floats),
`int` (integers, optionally on a log scale) and `categorical` (a list of values). Which one a field
may take follows its type: a float field any of the float ones or categorical, an integer field
`int` or categorical, any other field (a choice, a flag) categorical.

The default space of a method is the shared part (the optimiser and the widths, which every
method has) and the method's own (`reference_set` for mle's eq. 5, `imputer_epochs` for the
autoencoders). Each default is declared per field with the methods it applies to, the way a
method plugin's options model will declare its own options' ranges: moving them there changes
where this table is read, not its shape. Ranges follow the spec's defaults for small two-view
data (MLP encoders): the learning rate a decade either side of 1e-3, weight decay from almost
none to strong, widths halved and doubled.

Pure data and pydantic, no torch: the API validates spaces with it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .spec import METHODS, TrainSpec

# Fields a study never searches: the setting it is about (dataset, modality, rate), what it
# compares (a method with its fusion), the seed (trials share one; the final runs vary it), the
# budget of epochs (the pruner's resource), how a run is executed and logged, and how its epoch is
# selected (fixed for the whole study).
NOT_SEARCHABLE = frozenset({
    "dataset", "method", "fusion", "missing_modality", "missing_rate", "other_missing_rate", "seed", "epochs", "device",
    "compile", "deterministic", "precision", "log_every_steps", "evaluate_missing", "split_by", "selection_rule", "name",
})
SEARCHABLE_FIELDS: tuple[str, ...] = tuple(name for name in TrainSpec.model_fields if name not in NOT_SEARCHABLE)
MAX_CHOICES = 100


class _Distribution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def values_to_check(self) -> list[Any]:
        """Values that must each make a valid spec for the space to be valid (its ends, its choices)."""
        raise NotImplementedError


class _FloatRange(_Distribution):
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> "_FloatRange":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        return self

    def values_to_check(self) -> list[Any]:
        return [self.low, self.high]


class LogUniform(_FloatRange):
    distribution: Literal["loguniform"] = "loguniform"
    low: float = Field(gt=0, allow_inf_nan=False)
    high: float = Field(gt=0, allow_inf_nan=False)


class Uniform(_FloatRange):
    distribution: Literal["uniform"] = "uniform"


class IntRange(_Distribution):
    distribution: Literal["int"] = "int"
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = Field(False, description="Sample on a log scale (step must then be 1)")

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.step != 1 or self.low < 1):
            raise ValueError("a log-scale int range needs step 1 and low ≥ 1")
        if (self.high - self.low) % self.step:
            raise ValueError(f"high − low ({self.high - self.low}) must be a multiple of step ({self.step})")
        return self

    def values_to_check(self) -> list[Any]:
        return [self.low, self.high]


Choice = bool | int | float | str


class Categorical(_Distribution):
    distribution: Literal["categorical"] = "categorical"
    choices: list[Annotated[Choice, Field(union_mode="left_to_right")]] = Field(min_length=1, max_length=MAX_CHOICES)

    @model_validator(mode="after")
    def _distinct(self) -> "Categorical":
        seen = [repr(choice) for choice in self.choices]
        if len(set(seen)) != len(seen):
            raise ValueError("a choice is listed twice")
        if any(isinstance(c, str) and len(c) > 200 for c in self.choices):
            raise ValueError("a choice is longer than 200 characters")
        return self

    def values_to_check(self) -> list[Any]:
        return list(self.choices)


Distribution = Annotated[LogUniform | Uniform | IntRange | Categorical, Field(discriminator="distribution")]
SearchSpace = dict[str, Distribution]


def _kind(field: str) -> str:
    """float, int or other: which distributions the field may take."""
    annotation = TrainSpec.model_fields[field].annotation
    if get_origin(annotation) is None and annotation in (int, float):
        return annotation.__name__
    return "other"


ALLOWED = {"float": ("loguniform", "uniform", "categorical"), "int": ("int", "categorical"), "other": ("categorical",)}


def distribution_error(field: str, distribution: _Distribution) -> str | None:
    """Why `distribution` cannot be a field's space (None: it can, as far as types go; the values
    themselves are checked by building specs with them)."""
    if field not in TrainSpec.model_fields:
        return f"{field!r} is not a field of a run spec"
    if field in NOT_SEARCHABLE:
        return (f"{field!r} is not searched by a study (the setting, the method and its fusion, the seed, the "
                f"epochs, how a run is executed, logged and selected are fixed for the whole study)")
    allowed = ALLOWED[_kind(field)]
    if distribution.distribution not in allowed:
        return f"{field!r} takes {' or '.join(allowed)}, not {distribution.distribution}"
    return None


# The default ranges, per field, with the methods each applies to (None: every method).
DEFAULT_RANGES: dict[str, tuple[_Distribution, tuple[str, ...] | None]] = {
    "lr": (LogUniform(low=1e-4, high=1e-2), None),
    "weight_decay": (LogUniform(low=1e-6, high=1e-2), None),
    "feature_dim": (Categorical(choices=[32, 64, 128]), None),
    "hidden_dim": (Categorical(choices=[64, 128, 256]), None),
    # S in eq. 5: every complete training sample or the batch's (mle alone marginalises over it).
    "reference_set": (Categorical(choices=["all_complete", "batch"]), ("mle",)),
    "imputer_epochs": (IntRange(low=10, high=60, step=5), ("ae1", "ae2")),
}


def default_search_space(method: str) -> dict[str, _Distribution]:
    """The default space of `method`: every default range that applies to it."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    return {field: distribution for field, (distribution, methods) in DEFAULT_RANGES.items()
            if methods is None or method in methods}


def describe(distribution: _Distribution) -> str:
    """One line for people: "loguniform 0.0001–0.01", "categorical 32, 64, 128"."""
    if isinstance(distribution, Categorical):
        return "categorical " + ", ".join(map(str, distribution.choices))
    log = " (log)" if isinstance(distribution, IntRange) and distribution.log else ""
    step = f" step {distribution.step}" if isinstance(distribution, IntRange) and distribution.step != 1 else ""
    return f"{distribution.distribution} {distribution.low:g}–{distribution.high:g}{step}{log}"
