"""What the run API accepts and returns."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_serializer, field_validator

from training.spec import TrainSpec

from ..api.params import CleanInput, has_control_characters


class RunCreate(CleanInput, TrainSpec):
    """A training spec (the same fields, types and checks: it is one) plus how the run is shown."""

    name: str | None = Field(None, max_length=200, description="Shown in the runs list; default: derived from the spec")

    @field_validator("name")
    @classmethod
    def _printable(cls, name: str | None) -> str | None:
        # PostgreSQL cannot store NUL, and no control character belongs in a name shown on a page.
        if name is not None and has_control_characters(name):
            raise ValueError("must not contain control characters")
        return name

    def training_spec(self) -> dict[str, Any]:
        """The spec as the run row stores it and the worker reads it back (TrainSpec's fields)."""
        return self.model_dump(include=set(TrainSpec.model_fields))


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no NaN or infinity: a diverged loss is reported as null.
    return value if value is None or math.isfinite(value) else None


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    state: str
    dataset: str
    method: str
    fusion: str
    missing_modality: str
    missing_rate: float
    seed: int
    spec: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    worker: str | None
    attempts: int = Field(description="Times a worker started it")
    worker_losses: int = Field(description="Times its worker died and it was queued again (or failed)")
    awaiting_broker: bool = Field(False, description="Queued and saved, but waiting for the broker (it was down when "
                                                     "the run was submitted or queued again); sent when it is back")
    broker_error: str | None = Field(None, description="Why its id could not be sent yet, while awaiting_broker")
    cancel_requested: bool
    epochs_completed: int
    test_accuracy: float | None = Field(description="At the epoch chosen on validation accuracy, once succeeded")
    val_accuracy: float | None
    best_epoch: int | None
    info: dict[str, Any] | None
    error: str | None
    error_detail: str | None
    sweep_id: int | None
    tags: list[str]
    note: str | None

    @field_serializer("test_accuracy", "val_accuracy")
    def _finite(self, value: float | None) -> float | None:
        return _finite_or_none(value)


class RunPage(BaseModel):
    items: list[RunOut]
    total: int = Field(description="How many runs match the filters")
    limit: int
    offset: int
    next_cursor: str | None = Field(
        description="Pass as `cursor` (same filters and sort) for the next page; null on the last page"
    )


# Tags are typed in a comma-separated field, hence no commas; no control characters either.
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50, pattern=r"^[^,\x00-\x1f]+$")]


class RunUpdate(CleanInput):
    """What a person may change on a run; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    note: str | None = Field(None, max_length=10_000, description="Free text; empty or null removes it")
    tags: list[Tag] | None = Field(None, max_length=50, description="The whole set of tags (replaces the old set)")

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, name: str | None) -> str | None:
        if name is not None and not name.strip():
            raise ValueError("the name cannot be blank")
        if name is not None and has_control_characters(name):
            raise ValueError("must not contain control characters")
        return name.strip() if name is not None else None

    @field_validator("note")
    @classmethod
    def _note_storable(cls, note: str | None) -> str | None:
        if note is not None and has_control_characters(note, allow_newlines=True):
            raise ValueError("must not contain control characters other than line breaks and tabs")
        return note


class MetricPointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    name: str
    value: float | None

    @field_serializer("value")
    def _finite(self, value: float | None) -> float | None:
        return _finite_or_none(value)


class MetricsPage(BaseModel):
    points: list[MetricPointOut]
    cursor: int = Field(description="Pass as `after` to get only the points recorded since")
    state: str
    downsampled: bool = Field(False, description="True when `max_points` thinned the series for display")


class ArtifactOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    path: str = Field(description="Download it at /api/runs/{run_id}/artifacts/{path}")
    size: int = Field(description="Bytes")


class RunPairOut(BaseModel):
    """A run against a reference run, test sample by test sample."""

    run_id: int
    reference: int = Field(description="The run it is compared with")
    comparable: bool = Field(description="Both stored their test predictions and saw the same test set")
    reason: str | None = Field(description="Why not comparable")
    samples: int | None = Field(description="Test samples (videos, where accuracy is per video) compared")
    diff: float | None = Field(description="Accuracy on them (fraction), this run − the reference")
    discordant: list[int] | None = Field(description="[only the reference right, only this run right]")
    p_value: float | None = Field(description="McNemar's exact two-sided p-value")
    p_adjusted: float | None = Field(description="After Holm's correction over the runs compared")
    significant: bool = Field(description="p_adjusted below 0.05")


class ConfusionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int = Field(description="The epoch chosen on validation accuracy")
    classes: list[str]
    counts: list[list[int]] = Field(description="Rows: true class; columns: predicted class")
    counted: Literal["samples", "groups"] = Field(
        "samples", description="What a count counts: test samples, or groups (videos) when the run's accuracy is "
                               "per group (its segments' probabilities averaged)")
