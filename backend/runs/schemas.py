"""What the run API accepts and returns."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_serializer, field_validator, model_validator

from training.spec import TrainSpec

from ..api.params import CleanInput, DisplayName, printable_text
from . import query


class RunCreate(CleanInput, TrainSpec):
    """A training spec (the same fields, types and checks: it is one) plus how the run is shown."""

    name: DisplayName | None = Field(None, description="Shown in the runs list; default: derived from the spec")

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
    needs_own_slot: bool = Field(False, description="It ran out of memory beside other runs on its GPU: it is "
                                                    "trained with the GPU to itself")
    waiting_for_worker: str | None = Field(None, description="Queued, and no live worker can train its method: "
                                                            "\"no worker can train `X`\" and why (docs/methods.md); "
                                                            "null otherwise")
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
    external: bool = Field(False, description="Trained elsewhere and logged through POST /api/runs/external")
    environment: dict[str, Any] | None = Field(
        None, description="The reproducibility record: `missmod_version`, `git_commit`, `python`, `torch`, `cuda`, "
                          "`cudnn`, `device`, `device_name`, `torch_threads`, `torch_interop_threads`, `cpu_count`, "
                          "`host`, `plugin`, `plugin_version` (null where unknown); null for a run made before "
                          "missmod kept it (not recorded)")
    progress: dict[str, Any] | None = Field(
        None, description="While running: where the training is inside the current epoch: `step` (of `steps`), "
                          "`epoch` (of `epochs`), `global_step`, `samples_per_second`, `eta_seconds` (the epoch's "
                          "end), `run_eta_seconds` (the run's end), `at` (when measured); null otherwise")

    @field_validator("spec", mode="before")
    @classmethod
    def _spec_as_stored(cls, spec: Any) -> dict[str, Any]:
        # A row is shown whatever its JSON holds: a list stays a page that answers, not a 500.
        return spec if isinstance(spec, dict) else {}

    @field_validator("info", "progress", "environment", mode="before")
    @classmethod
    def _object_or_none(cls, value: Any) -> dict[str, Any] | None:
        return value if isinstance(value, dict) else None

    @model_validator(mode="after")
    def _progress_only_while_running(self) -> "RunOut":
        if self.state != "running":
            self.progress = None
        if self.state != "queued":
            self.waiting_for_worker = None
        return self

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


# Tags are typed in a comma-separated field, hence no commas.
Tag = Annotated[printable_text(50, min_length=1, strip=True), StringConstraints(pattern=r"^[^,]+$")]


class RunUpdate(CleanInput):
    """What a person may change on a run; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    name: printable_text(200, min_length=1) | None = None
    note: printable_text(10_000, line_breaks=True) | None = Field(None, description="Free text; empty or null removes it")
    tags: list[Tag] | None = Field(None, max_length=50, description="The whole set of tags (replaces the old set)")

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, name: str | None) -> str | None:
        if name is not None and not name.strip():
            raise ValueError("the name cannot be blank")
        return name.strip() if name is not None else None


class MetricPointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    step: int = Field(0, description="Global optimiser step: where the epoch ended for per-epoch points; per-step "
                                     "points are named `step/...`")
    name: str
    value: float | None

    @field_serializer("value")
    def _finite(self, value: float | None) -> float | None:
        return _finite_or_none(value)


class MetricsPage(BaseModel):
    points: list[MetricPointOut]
    cursor: int = Field(description="Pass as `after` to get only the points recorded since")
    next_cursor: int | None = Field(
        None, description="Pass as `after` for the next page; null when this page holds every point recorded so "
                          "far (a live run records more: poll with `cursor`, or stream)")
    state: str
    downsampled: bool = Field(False, description="True when `max_points` thinned the series for display")


class SeriesColumns(BaseModel):
    epoch: list[int]
    step: list[int]
    value: list[float | None]


class MetricsColumns(BaseModel):
    """GET /api/runs/{id}/metrics?format=columns"""

    series: dict[str, SeriesColumns] = Field(description="Per metric name, its points as three arrays in x order")
    cursor: int
    state: str
    downsampled: bool
    total: int = Field(description="Points read (before thinning)")


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


class PredictionsOut(BaseModel):
    """A run's test predictions at its selected epoch, one per test sample (or group), in the
    order of its test set: runs of the same dataset, seed and split list the same samples in the
    same order, so two runs' lists pair element by element (McNemar's test, docs/statistics.md)."""

    run_id: int
    epoch: int = Field(description="The epoch chosen on validation accuracy")
    classes: list[str] = Field(description="Class names; `labels` and `predicted` index into them")
    counted: Literal["samples", "groups"] = Field(
        description="What one entry is: a test sample, or a group (video) when the run's accuracy is per group")
    labels: list[int] = Field(description="The true class of each test sample")
    predicted: list[int] = Field(description="The predicted class of each test sample")


class PredictionOut(BaseModel):
    """Class probabilities of the samples sent, from the run's model at its selected epoch
    (docs/predict.md), by the method's own rule for what was given."""

    run_id: int
    epoch: int = Field(description="The epoch the model is of: the run's selected epoch")
    method: str
    inputs: Literal["x_and_y", "x_only", "y_only"] = Field(description="What the samples gave")
    rule: str = Field(description="How the method predicts from that (eq. 4, eq. 5 over a bank of training y's, …)")
    classes: list[str]
    predicted: list[int] = Field(description="Each sample's predicted class (index into `classes`): the argmax")
    predicted_class: list[str] = Field(description="Each sample's predicted class, by name")
    probabilities: list[list[float]] = Field(description="Each sample's class probabilities, in the order of `classes`")
    seconds: float = Field(description="From sending the request to a worker to reading its answer")
    worker_seconds: float = Field(description="On the worker: reading the bundle and predicting")


# --- runs trained elsewhere ---------------------------------------------------------------

MAX_EXTERNAL_POINTS = 100_000


class ExternalPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epoch: int = Field(ge=0, le=10_000_000, description="Epoch (or step) the value was measured at")
    name: printable_text(100, min_length=1)
    value: float | None = Field(description="null (or a non-finite number) for a diverged value")


class ExternalConfusion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    classes: list[printable_text(200, min_length=1)] = Field(min_length=1, max_length=1000)
    counts: list[list[Annotated[int, Field(ge=0, le=2**31 - 1)]]] = Field(
        description="Rows: true class; columns: predicted class (K × K)")

    @model_validator(mode="after")
    def _square(self) -> "ExternalConfusion":
        k = len(self.classes)
        if len(self.counts) != k or any(len(row) != k for row in self.counts):
            raise ValueError(f"counts must be {k} × {k}, one row and one column per class")
        return self


MAX_TEST_PREDICTIONS = 1_000_000
TestPredictions = Annotated[list[Annotated[int, Field(ge=0, le=65_535)]], Field(max_length=MAX_TEST_PREDICTIONS)]
ProtocolDigest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
TEST_PREDICTIONS_DESCRIPTION = (
    "The predicted class of every test sample (group) of missmod's split for this setting, in the order GET "
    "/api/protocol lists them (`test_groups`): the run is then paired with missmod's runs test sample by test sample "
    "(McNemar); its true labels, confusion matrix and test accuracy follow from them")
PROTOCOL_DIGEST_DESCRIPTION = ("The `digest` of the split it trained on, as GET /api/protocol gave it: refused when "
                               "it is not missmod's for this setting")


class ExternalRunCreate(CleanInput):
    """A run trained by another codebase: its setting (as a run spec names it), its metrics per
    epoch or step, and its final result. The setting is free-form (a method missmod does not
    have is fine); the run is recorded as succeeded and marked external everywhere."""

    model_config = ConfigDict(extra="forbid")

    dataset: printable_text(200, min_length=1)
    method: printable_text(50, min_length=1)
    fusion: printable_text(20, min_length=1) = "add"
    missing_modality: printable_text(100, min_length=1)
    missing_rate: float = Field(ge=0.0, lt=1.0)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    name: printable_text(200, min_length=1) | None = Field(None, description="Default: derived from the setting")
    source: printable_text(500) | None = Field(
        None, description="Where it was trained (a repository, a paper, a script)")
    spec: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other settings, kept with the run. A setting missmod's runs have too (`lr`, `epochs`, "
                    "`encoder`, …) must have its type (a number, true or false, text), so the runs list can "
                    "filter and sort by it")
    metrics: list[ExternalPoint] = Field(default_factory=list, max_length=MAX_EXTERNAL_POINTS)
    test_accuracy: float | None = Field(None, ge=0.0, le=1.0, description="Fraction, as missmod's runs report it")
    val_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    best_epoch: int | None = Field(None, ge=0, le=10_000_000,
                                   description="The epoch the result is from; default the last epoch of `metrics`")
    confusion: ExternalConfusion | None = None
    sweep_id: int | None = Field(None, ge=1, le=2**31 - 1,
                                 description="Show it in this sweep's comparison table and trend (marked external)")
    test_predictions: TestPredictions | None = Field(None, description=TEST_PREDICTIONS_DESCRIPTION)
    protocol_digest: ProtocolDigest | None = Field(None, description=PROTOCOL_DIGEST_DESCRIPTION)

    @field_validator("spec")
    @classmethod
    def _small_typed_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(spec)) > 20_000:
            raise ValueError("at most 20,000 characters of settings")
        wrong = [f"{key}: {query.KIND_NAMES[kind]}, not {value!r}"[:200] for key, value in spec.items()
                 if key in query.SPEC_FIELDS and key not in NAMED_SPEC_FIELDS
                 and not query.has_kind(value, kind := query.SPEC_FIELDS[key][0])]
        if wrong:
            raise ValueError("settings missmod knows must have their type (or be null): " + "; ".join(wrong))
        return spec

    def run_spec(self) -> dict[str, Any]:
        """What is stored as the run's spec: the free-form settings under the named ones."""
        named = self.model_dump(include=NAMED_SPEC_FIELDS)
        return {**self.spec, **named}


# The settings an external run names in fields of their own (they win over the same keys of `spec`).
NAMED_SPEC_FIELDS = {"dataset", "method", "fusion", "missing_modality", "missing_rate", "seed"}


# --- bulk actions ---------------------------------------------------------------------------


class RunIds(CleanInput):
    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(min_length=1, max_length=10_000)


class RefusedRun(BaseModel):
    id: int
    reason: str


class BulkResult(BaseModel):
    done: list[int] = Field(description="The runs the action was applied to")
    not_found: list[int]
    refused: list[RefusedRun] = Field(description="Runs the action does not apply to (e.g. already finished)")


# --- live runs: logged step by step from a script's own loop -------------------------------

MAX_LIVE_BATCH = 200_000
# The reproducibility record a script sends: the keys of training/reproducibility.py, plain values.
EnvironmentValue = Annotated[str, StringConstraints(max_length=500)] | int | float | bool | None


class LiveRunCreate(ExternalRunCreate):
    """A run trained by a script's own loop and logged while it trains: its setting (as for an
    external run), then points, heartbeats and its end through /api/runs/{id}/live/…"""

    metrics: list[ExternalPoint] = Field(default_factory=list, max_length=0, description="Not here: log points live")
    environment: dict[Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,40}$")], EnvironmentValue] | None = Field(
        None, max_length=40, description="The script's reproducibility record (the client sends it)")
    steps_per_epoch: int | None = Field(None, ge=1, le=10_000_000,
                                        description="Places per-step points on the epoch axis of the run page")
    epochs: int | None = Field(None, ge=1, le=1_000_000, description="How many epochs it means to train (progress)")


class LiveRunOut(RunOut):
    lease: str = Field(description="Send it with every write: only the script that started the run logs into it")
    heartbeat_interval: float = Field(description="Seconds between the client's heartbeats (when it logs nothing)")
    lease_timeout: float = Field(description="Seconds without a write or heartbeat after which the run is lost "
                                             "(failed): LIVE_RUN_TIMEOUT")


class LivePoints(CleanInput):
    """A batch of points as columns: point i is (`epoch[i]`, `step[i]`, `names[name[i]]`, `value[i]`).
    Per-step points are named `step/…`; a value null (or non-finite) is a diverged one."""

    model_config = ConfigDict(extra="forbid")

    lease: printable_text(100, min_length=1)
    names: list[printable_text(100, min_length=1)] = Field(max_length=1000)
    epoch: list[Annotated[int, Field(ge=0, le=10_000_000)]] = Field(max_length=MAX_LIVE_BATCH)
    step: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(max_length=MAX_LIVE_BATCH)
    name: list[Annotated[int, Field(ge=0, le=999)]] = Field(max_length=MAX_LIVE_BATCH)
    value: list[float | None] = Field(max_length=MAX_LIVE_BATCH)
    epochs_completed: int | None = Field(None, ge=0, le=10_000_000, description="The last epoch it finished")

    @model_validator(mode="after")
    def _columns_agree(self) -> "LivePoints":
        n = len(self.epoch)
        if not (len(self.step) == len(self.name) == len(self.value) == n):
            raise ValueError("epoch, step, name and value must have one entry per point")
        if self.name and max(self.name) >= len(self.names):
            raise ValueError(f"name holds an index past the {len(self.names)} names")
        return self


class LiveLease(CleanInput):
    model_config = ConfigDict(extra="forbid")

    lease: printable_text(100, min_length=1)


class LiveWritten(BaseModel):
    points: int = Field(description="Points in the batch (each stored once, whatever the retries)")
    cancel_requested: bool = Field(description="Someone asked to cancel the run: the script may stop and finish")


class LiveFinish(CleanInput):
    model_config = ConfigDict(extra="forbid")

    lease: printable_text(100, min_length=1)
    test_accuracy: float | None = Field(None, ge=0.0, le=1.0, description="Default: from test_predictions")
    val_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    best_epoch: int | None = Field(None, ge=0, le=10_000_000, description="Default: the last epoch logged")
    confusion: ExternalConfusion | None = None
    test_predictions: TestPredictions | None = Field(None, description=TEST_PREDICTIONS_DESCRIPTION)
    protocol_digest: ProtocolDigest | None = Field(None, description=PROTOCOL_DIGEST_DESCRIPTION)


class LiveFail(CleanInput):
    model_config = ConfigDict(extra="forbid")

    lease: printable_text(100, min_length=1)
    error: printable_text(2000, min_length=1)
    detail: printable_text(50_000, line_breaks=True) | None = None


class ProtocolOut(BaseModel):
    """The samples missmod's workers use for a setting (training/protocol.py)."""

    dataset: str
    seed: int
    missing_rate: float
    other_missing_rate: float
    split_by: str
    train: list[int] = Field(description="Rows of the dataset used for training")
    val: list[int]
    test: list[int]
    y_missing: list[bool] = Field(description="Per training row (train[i]): it lost y, the missing modality")
    x_missing: list[bool] = Field(description="Per training row: it lost x instead (other_missing_rate)")
    test_groups: list[Any] = Field(description="The order test predictions are listed in: one per test group "
                                               "(a video's segments count once), or per test row without groups")
    test_labels: list[int] = Field(description="The true class of each, in that order")
    classes: list[str]
    digest: str = Field(description="Fingerprint of the split and mask; a worker's run records it as "
                                    "info.protocol_digest")
