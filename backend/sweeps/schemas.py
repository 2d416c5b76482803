"""What the sweep and preset API accept and return.

A sweep body has the fields of a run (RunCreate), and any of them may hold a list of values
instead of one value; the sweep is the product of the lists. The fields are generated from
RunCreate, so a field added to the training spec can be swept at once. Values are checked
per combination by the run validation itself, not here: this schema only checks the shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator, model_validator

from ..api.params import DisplayName
from ..runs.schemas import RunCreate
from .grid import MAX_RUNS_PER_SWEEP, grid_size

MAX_VALUES_PER_FIELD = 1_000
SWEEPABLE_FIELDS = [name for name in RunCreate.model_fields if name != "name"]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


class SweepBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: DisplayName | None = Field(None, description="The sweep's name; default: derived from the grid")
    skip_invalid: bool = Field(
        False, description="Leave out the combinations the run validation refuses (listed in the response) "
                           "instead of refusing the whole sweep")

    @field_validator("*", mode="after")
    @classmethod
    def _values_or_list(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name not in SWEEPABLE_FIELDS:
            return value
        values = _as_list(value)
        if not values:
            raise ValueError("an empty list: give at least one value")
        if len(values) > MAX_VALUES_PER_FIELD:
            raise ValueError(f"{len(values)} values; at most {MAX_VALUES_PER_FIELD} per field")
        if any(isinstance(v, (list, dict)) for v in values):
            raise ValueError("a value or a flat list of values")
        seen: set[str] = set()
        for v in values:
            if repr(v) in seen:
                raise ValueError(f"{v!r} is listed twice")
            seen.add(repr(v))
        return value

    @model_validator(mode="after")
    def _not_too_many(self) -> "SweepBase":
        size = grid_size(self.grid())
        if size > MAX_RUNS_PER_SWEEP:
            raise ValueError(f"the grid has {size:,} combinations; at most {MAX_RUNS_PER_SWEEP:,} per sweep")
        return self

    def grid(self) -> dict[str, list[Any]]:
        """Field → the list of its values, for the fields given (the others take their defaults)."""
        return {name: _as_list(getattr(self, name)) for name in SWEEPABLE_FIELDS if name in self.model_fields_set}


def _sweep_field(name: str, schema: dict[str, Any]) -> tuple[Any, Any]:
    one = {k: v for k, v in schema.items() if k not in ("title", "default", "description")}
    description = schema.get("description", "")
    return (Any, Field(None, description=f"{description + '. ' if description else ''}"
                                         "A value, or a list of values to sweep over",
                       json_schema_extra={"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]}))


_RUN_PROPERTIES = RunCreate.model_json_schema()["properties"]
SweepCreate = create_model(
    "SweepCreate",
    __base__=SweepBase,
    __doc__="The fields of a run; any of them may be a list, and the sweep is the product of the lists.",
    **{name: _sweep_field(name, _RUN_PROPERTIES[name]) for name in SWEEPABLE_FIELDS},
)


class InvalidCombinations(BaseModel):
    """Combinations the run validation refuses for one reason."""

    loc: list[str | int]
    msg: str
    input: Any
    combinations: int = Field(description="How many combinations this reason refuses")
    example: dict[str, Any] = Field(description="The varying fields of one refused combination")


class SweepPreview(BaseModel):
    combinations: int = Field(description="Size of the grid")
    runs: int = Field(description="How many runs would be created")
    invalid: list[InvalidCombinations]
    would_refuse: bool = Field(description="True when creating it now would be refused (422)")
    name: str


class SweepProgress(BaseModel):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    total: int = 0
    done: bool = Field(False, description="Every run has finished (succeeded, failed or cancelled)")


class SweepOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    created_at: datetime
    grid: dict[str, Any]
    preset: str | None
    preset_options: dict[str, Any] | None
    progress: SweepProgress


class SweepCreated(SweepOut):
    run_ids: list[int]
    awaiting_broker: list[int] = Field(default_factory=list, description="Runs saved and queued but waiting for the "
                                       "broker (it was down); sent as soon as it is back")
    left_out: list[InvalidCombinations] = Field(description="Combinations left out by skip_invalid")


class SweepPage(BaseModel):
    items: list[SweepOut]
    total: int
    limit: int
    offset: int


class RetriedRuns(BaseModel):
    run_ids: list[int]


# --- presets ----------------------------------------------------------------------------


class PresetRequest(BaseModel):
    """Run a paper preset on any dataset; `visual`/`audio` say which of its modalities plays
    the paper's visual and audio modality."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=200)
    visual: str | None = Field(None, max_length=100, description="Default: the dataset's `visual` modality, "
                                                                 "else its first")
    audio: str | None = Field(None, max_length=100, description="Default: the dataset's `audio` modality, else "
                                                                "its second")
    seeds: int = Field(5, ge=1, le=20, description="Seeds 0…seeds−1 (the paper: 5)")
    epochs: int = Field(30, ge=1, le=10_000)
    only_available: bool = Field(False, description="Create only what the training library can run now "
                                                    "(leaving out methods or extractors it lacks)")
    name: DisplayName | None = None


class PresetOut(BaseModel):
    name: str
    figure: str
    title: str
    description: str
    paper_dataset: str
    focus: str
    methods: list[str]
    features: list[str] = Field(description="Feature extractors: on a video dataset, its features datasets "
                                           "<dataset>-<backbone>-imagenet|random (the preview says which are missing)")
    runs_per_seed: int
    missing_methods: list[str]
    assumptions: list[str]
    reported: str | None = Field(description="The paper table whose numbers are shown beside the sweep's")


class PresetPreview(BaseModel):
    runs: int
    roles: dict[str, str]
    missing_methods: list[str]
    missing_features: list[str] = Field(description="Backbones whose features of this dataset are not extracted yet")
    left_out: list[str]
    would_refuse: bool
    message: str | None
    name: str


# --- results ----------------------------------------------------------------------------


class CellOut(BaseModel):
    mean: float | None = Field(description="Mean test accuracy (fraction) over the seeds that succeeded")
    std: float | None = Field(description="Sample standard deviation (n − 1); null below two seeds")
    n: int = Field(description="Seeds that succeeded")
    pending: int = Field(description="Runs of this cell still queued or running")
    best: bool = Field(description="Highest mean of its column")
    paper: float | None = Field(description="The paper's reported accuracy (fraction) for this setting")
    run_ids: list[int]


class ColumnOut(BaseModel):
    missing_modality: str
    missing_rate: float
    role: str | None = Field(description="The paper's name for the modality (visual/audio), in a preset sweep")
    label: str


class RowOut(BaseModel):
    label: str
    method: str
    fusion: str
    extras: dict[str, Any] = Field(description="Other spec fields the sweep varies, which split rows")
    cells: list[CellOut]


class PaperOut(BaseModel):
    table: str
    dataset: str
    setting: str
    same_dataset: bool
    note: str
    figure: str
    focus: str
    assumptions: list[str]


class TableOut(BaseModel):
    sweep_id: int
    metric: str = "test_accuracy"
    columns: list[ColumnOut]
    rows: list[RowOut]
    paper: PaperOut | None


class TrendSeriesOut(BaseModel):
    label: str
    method: str
    fusion: str
    missing_modality: str
    role: str | None
    rates: list[float]
    means: list[float]
    stds: list[float | None]
    counts: list[int]
    source: str = Field(description="`sweep` (this sweep's runs) or `paper` (the paper's reported numbers)")


class TrendOut(BaseModel):
    sweep_id: int
    metric: str = "test_accuracy"
    series: list[TrendSeriesOut]


def table_out(sweep_id: int, table, paper: dict | None) -> TableOut:
    return TableOut(
        sweep_id=sweep_id,
        columns=[ColumnOut(missing_modality=c.missing_modality, missing_rate=c.missing_rate, role=c.role,
                           label=c.label) for c in table.columns],
        rows=[RowOut(label=r.label, method=r.method, fusion=r.fusion, extras=dict(r.extras),
                     cells=[CellOut(mean=c.mean, std=c.std, n=c.n, pending=c.pending, best=c.best, paper=c.paper,
                                    run_ids=c.run_ids) for c in r.cells]) for r in table.rows],
        paper=PaperOut(**paper) if paper else None,
    )


def trend_out(sweep_id: int, series) -> TrendOut:
    return TrendOut(sweep_id=sweep_id, series=[TrendSeriesOut(**vars(s)) for s in series])


class SweepRunOut(BaseModel):
    """A run as the sweep page lists it."""

    id: int
    name: str
    state: str
    method: str
    fusion: str
    missing_modality: str
    missing_rate: float
    seed: int
    epochs_completed: int
    epochs: int | None
    test_accuracy: float | None
    best_epoch: int | None
    awaiting_broker: bool = False  # queued, saved, waiting for the broker (it was down)
