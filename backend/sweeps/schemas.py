"""What the sweep and preset API accept and return.

A sweep body has the fields of a run (RunCreate), and any of them may hold a list of values
instead of one value; the sweep is the product of the lists. The fields are generated from
the training spec's fields, with their types and ranges, so a field added to the spec can be
swept at once and a value no run could take is refused here, naming the field. What depends
on the other fields (a fusion the method lacks, a modality the dataset lacks) is checked per
combination by the run validation itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo, create_model,
                      field_validator, model_validator)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from ..api.from_dataclass import response_model_of
from ..api.params import CleanInput, DisplayName
from ..runs.schemas import RunCreate
from .analysis import Cell, Column, Row, TrendSeries
from .grid import MAX_RUNS_PER_SWEEP, grid_size, option_key
from .paired import Paired, PairedSummary

MAX_VALUES_PER_FIELD = 1_000
# A method's own options are swept per method (`method_options` below), not as one field.
SWEEPABLE_FIELDS = [name for name in RunCreate.model_fields if name not in ("name", "method_options")]
OptionKey = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_]*$")]


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


class SweepBase(CleanInput):
    model_config = ConfigDict(extra="forbid")

    name: DisplayName | None = Field(None, description="The sweep's name; default: derived from the grid")
    skip_invalid: bool = Field(
        False, description="Leave out the combinations the run validation refuses (listed in the response) "
                           "instead of refusing the whole sweep")
    method_options: dict[OptionKey, dict[OptionKey, Any]] | None = Field(
        None, description="Each method's own options (GET /api/methods: `options`): method → option → a value, or a "
                          "list of values to sweep over. Only that method's runs multiply: "
                          "`{\"moddrop\": {\"drop_rate\": [0.3, 0.5]}}` beside `method: [mle, moddrop]` is one mle "
                          "run and two moddrop runs per setting")

    @field_validator("method_options")
    @classmethod
    def _option_values(cls, options: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        for method, values in (options or {}).items():
            for option, value in values.items():
                listed = _as_list(value)
                if not listed:
                    raise ValueError(f"{method}.{option}: an empty list: give at least one value")
                if len(listed) > MAX_VALUES_PER_FIELD:
                    raise ValueError(f"{method}.{option}: {len(listed)} values; at most {MAX_VALUES_PER_FIELD}")
                if any(isinstance(v, (list, dict)) for v in listed):
                    raise ValueError(f"{method}.{option}: a value or a flat list of values")
                if len({repr(v) for v in listed}) < len(listed):
                    raise ValueError(f"{method}.{option}: a value is listed twice")
        return options

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
    def _options_of_swept_methods(self) -> "SweepBase":
        methods = _as_list(getattr(self, "method", None))
        for method in self.method_options or {}:
            if method not in methods:
                raise ValueError(f"method_options for {method!r}, which the sweep does not run (its methods: "
                                 f"{', '.join(map(str, methods))})")
        return self

    @model_validator(mode="after")
    def _not_too_many(self) -> "SweepBase":
        size = grid_size(self.grid())
        if size > MAX_RUNS_PER_SWEEP:
            raise ValueError(f"the grid has {size:,} combinations; at most {MAX_RUNS_PER_SWEEP:,} per sweep")
        return self

    def grid(self) -> dict[str, list[Any]]:
        """Field → the list of its values, for the fields given (the others take their defaults)."""
        grid = {name: _as_list(getattr(self, name)) for name in SWEEPABLE_FIELDS if name in self.model_fields_set}
        for method, options in (self.method_options or {}).items():
            for option, value in options.items():
                grid[option_key(method, option)] = _as_list(value)
        return grid


def _values_of(spec_field: FieldInfo) -> TypeAdapter:
    """The spec field's type with its constraints (ranges, lengths), for one value of the grid."""
    one = Annotated[spec_field.annotation, *spec_field.metadata] if spec_field.metadata else spec_field.annotation
    return TypeAdapter(list[one])


def _typed_values(adapter: TypeAdapter):
    def validate(value: Any) -> Any:
        values = _as_list(value)
        if any(isinstance(v, (list, dict)) for v in values):
            return value  # the shape check (_values_or_list) says what is wrong
        try:
            typed = adapter.validate_python(values)
        except ValidationError as error:
            # Named by the field alone (not field.index), so the forms show it next to the field.
            first = error.errors(include_url=False)[0]
            raise PydanticCustomError(first["type"], "{reason}", {"reason": first["msg"]}) from None
        return typed if isinstance(value, list) else typed[0]

    return validate


def _sweep_field(name: str, spec_field: FieldInfo, schema: dict[str, Any]) -> tuple[Any, Any]:
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
    __validators__={
        f"_typed_{name}": field_validator(name, mode="after")(_typed_values(_values_of(RunCreate.model_fields[name])))
        for name in SWEEPABLE_FIELDS
    },
    **{name: _sweep_field(name, RunCreate.model_fields[name], _RUN_PROPERTIES[name]) for name in SWEEPABLE_FIELDS},
)


class InvalidCombinations(BaseModel):
    """Combinations the run validation refuses for one reason."""

    model_config = ConfigDict(from_attributes=True)

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
    external: int = Field(0, description="Runs trained elsewhere logged into the sweep: counted in the states above "
                                         "only with include_external")


class SweepOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    created_at: datetime
    finished_at: datetime | None = Field(None, description="When its last run finished; null while any is queued "
                                                           "or running")
    grid: dict[str, Any]
    preset: str | None
    preset_options: dict[str, Any] | None
    progress: SweepProgress

    @classmethod
    def of(cls, sweep: Any, progress: dict[str, Any]) -> "SweepOut":
        """From the sweep row's attributes, with its progress (counted apart: one query serves a
        whole page of sweeps)."""
        return cls.model_validate(_WithProgress(sweep, progress))


class _WithProgress:
    """A sweep row seen with its progress as one more attribute."""

    def __init__(self, sweep: Any, progress: dict[str, Any]):
        self._sweep, self.progress = sweep, progress

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sweep, name)


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
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last page")


class RetriedRuns(BaseModel):
    run_ids: list[int]


# --- presets ----------------------------------------------------------------------------


class PresetRequest(CleanInput):
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
    model_config = ConfigDict(from_attributes=True)

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

    @field_validator("reported", mode="before")
    @classmethod
    def _table_title(cls, reported: Any) -> Any:
        return getattr(reported, "title", reported)  # a preset's PaperTable is named by its title


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


# The results are the analysis' own dataclasses (analysis.py, paired.py), answered through models
# generated from them (backend/api/from_dataclass.py): the descriptions below document them.

PairedOut = response_model_of(
    Paired, "PairedOut", doc="The cell against the reference cell of its column, seed by seed (docs/statistics.md).",
    types={"discordant": list[int] | None},
    computed={"mark": Literal["win", "loss"] | None},
    descriptions={
        "reference": "Label of the reference row",
        "n": "Seeds both cells have",
        "diff": "Mean paired difference of test accuracy (fraction), cell − reference",
        "ci_low": "95% t interval of the mean difference over seeds; null below 2 seeds",
        "wins": "Seeds where the cell beats the reference",
        "p_value": "p-value of the test in `test`",
        "p_adjusted": "p_value after Holm's correction over the table's comparisons",
        "significant": "p_adjusted below alpha",
        "mark": "A significant win or loss, after the correction",
        "test": "seeds: exact sign-flip test over seeds; samples: McNemar over test samples, pooled over seeds",
        "p_seeds": "Exact two-sided sign-flip permutation p-value over seeds",
        "p_samples": "Exact McNemar p-value over the test samples of every paired seed; null when a run has no "
                     "stored test predictions",
        "discordant": "[only the reference right, only the cell right], test samples summed over seeds",
        "seeds_needed": "About how many seeds would detect the observed mean difference with 80% power at alpha "
                        "(null: no difference)",
        "in_family": "In Holm's family of the table: false for a row of runs trained elsewhere (or against one) "
                     "unless include_external; then p_adjusted is null and the cell is never marked",
    })

CellOut = response_model_of(
    Cell, "CellOut", doc="One method (fusion) at one missing modality and rate, over the seeds.",
    exclude={"values"}, types={"paired": PairedOut | None},
    computed={"mean": float | None, "std": float | None, "n": int},
    descriptions={
        "mean": "Mean test accuracy (fraction) over the seeds that succeeded",
        "std": "Sample standard deviation (n − 1); null below two seeds",
        "n": "Seeds that succeeded",
        "pending": "Runs of this cell still queued or running",
        "best": "Highest mean of its column",
        "paper": "The paper's reported accuracy (fraction) for this setting",
        "seeds": "The seed of each run in run_ids",
        "is_reference": "The reference of its column's paired comparisons",
        "paired": "Compared with its column's reference; null for the reference itself, cells with no seed in "
                  "common and cells whose pairing is not verified",
        "pairing_verified": "False: this cell or its reference holds a run trained elsewhere that declared no split "
                            "shown to be missmod's, so it is not paired by seed (`paired` is null)",
    })

ColumnOut = response_model_of(
    Column, "ColumnOut", doc="A missing modality at a missing rate.", computed={"label": str},
    descriptions={"role": "The paper's name for the modality (visual/audio), in a preset sweep"})

RowOut = response_model_of(
    Row, "RowOut", doc="A method (fusion), and the other spec fields the sweep varies.",
    # analysis keeps the extras as (name, value) pairs, hashable; the answer is an object
    types={"extras": Annotated[dict[str, Any], BeforeValidator(dict)], "cells": list[CellOut]},
    computed={"label": str},
    descriptions={"extras": "Other spec fields the sweep varies, which split rows",
                  "external": "Runs trained elsewhere (POST /api/runs/external); the label says so"})


class PaperOut(BaseModel):
    table: str
    dataset: str
    setting: str
    same_dataset: bool
    note: str
    figure: str
    focus: str
    assumptions: list[str]


ComparisonOut = response_model_of(
    PairedSummary, "ComparisonOut", doc="How the cells were compared, and what the comparison can show with this "
                                        "many seeds.",
    exclude={"cells_without_predictions", "notes"},
    descriptions={
        "reference": "As asked: a row label or a method; null: the best baseline (best row of a method other than "
                     "mle) of each column",
        "references": "Per column, the label of its reference row",
        "tests": "Comparisons made (Holm's family)",
        "significant": "Comparisons significant after Holm's correction",
        "max_seeds": "The most seeds a comparison pairs",
        "smallest_p": "The smallest p-value the exact seed-level test can give with max_seeds",
        "seeds_for_alpha": "Seeds the exact seed-level test needs to reach alpha at all",
        "with_predictions": "Comparisons whose runs all stored their test predictions",
        "note": "What the comparison can and cannot show, in plain words",
        "include_external": "As asked: rows of runs trained elsewhere join Holm's family (and, where verified, may "
                            "be the default reference)",
        "outside_family": "Cells of runs trained elsewhere compared but left out of Holm's family",
        "not_verified": "Comparisons not made because a run trained elsewhere is not verified to share missmod's "
                        "split",
    })


class TableOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    sweep_id: int
    metric: str = "test_accuracy"
    columns: list[ColumnOut]
    rows: list[RowOut]
    paper: PaperOut | None
    comparison: ComparisonOut | None = None


TrendSeriesOut = response_model_of(
    TrendSeries, "TrendSeriesOut", types={"marks": list[Literal["win", "loss", "reference"] | None]},
    descriptions={
        "source": "`sweep` (this sweep's runs) or `paper` (the paper's reported numbers)",
        "external": "Runs trained elsewhere; the label says so",
        "diffs": "Per point, the mean paired difference to its column's reference",
        "p_adjusted": "Per point, Holm-adjusted p-value",
        "marks": "Per point: a significant win or loss, or the reference itself",
    })


class TrendOut(BaseModel):
    sweep_id: int
    metric: str = "test_accuracy"
    series: list[TrendSeriesOut]


class SweepSummary(BaseModel):
    table: TableOut
    trend: TrendOut


def table_out(sweep_id: int, table, paper: dict | None, comparison=None) -> TableOut:
    """`comparison`: the paired.PairedSummary of the table's cells (their `paired` is set)."""
    return TableOut(sweep_id=sweep_id, columns=table.columns, rows=table.rows, paper=paper, comparison=comparison)


def trend_out(sweep_id: int, series) -> TrendOut:
    return TrendOut(sweep_id=sweep_id, series=series)


class SweepRunOut(BaseModel):
    """A run as the sweep page lists it."""

    model_config = ConfigDict(from_attributes=True)

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
    external: bool = False  # trained elsewhere and logged into the sweep: not part of its progress
