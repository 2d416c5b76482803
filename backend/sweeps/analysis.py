"""The views of a sweep's results as plain functions over its runs: the comparison table in
the paper's layout and the missing-rate trend.

Rows are method (fusion), plus any other spec field the sweep varies (a row never averages
over, say, two learning rates); columns are missing modality × missing rate; a cell is the
mean ± sample standard deviation (n − 1) of the test accuracy over the seeds that succeeded.
Accuracies are fractions here, as in the run API; exports print percentages.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from training.spec import DEFAULTS_OF_LATER_OPTIONS

# The fields a table lays out by itself; any other field that varies joins the row key.
LAYOUT_FIELDS = frozenset({"method", "fusion", "missing_modality", "missing_rate", "seed"})
# Fields that never change a result, so never split rows.
NEUTRAL_FIELDS = frozenset({"device"})


@dataclass(frozen=True)
class RunResult:
    run_id: int
    state: str
    method: str
    fusion: str
    missing_modality: str
    missing_rate: float
    seed: int
    test_accuracy: float | None
    spec: dict[str, Any]
    dataset: str = ""
    external: bool = False  # trained elsewhere: a row of its own, marked, never averaged with ours


EXTERNAL_MARK = " [external]"


@dataclass(frozen=True)
class Column:
    missing_modality: str
    missing_rate: float
    role: str | None  # the paper's name for the modality, in a preset sweep

    @property
    def label(self) -> str:
        role = f" ({self.role})" if self.role else ""
        return f"{self.missing_modality}{role} {self.missing_rate * 100:g}%"


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)  # one per succeeded seed
    run_ids: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # the seed of each value: cells are paired by it
    pending: int = 0  # runs of this cell not finished yet
    best: bool = False
    paper: float | None = None  # the paper's number (fraction), where the preset matches its setting
    paired: Any = None  # paired.Paired against its column's reference, once compared
    is_reference: bool = False  # the reference of its column's paired comparisons
    # False when this cell or its reference holds a run trained elsewhere whose split is not known
    # to be missmod's: not paired by seed at all (paired.py, Pairing).
    pairing_verified: bool = True

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


@dataclass
class Row:
    method: str
    fusion: str
    extras: tuple[tuple[str, Any], ...]  # other varying fields, e.g. (("lr", 0.01),)
    cells: list[Cell]
    external: bool = False

    @property
    def label(self) -> str:
        # An ablation left at the paper's setting (or the default selection rule) is not named:
        # "mle (add)", not "mle (add), mle_freeze_class_offset=False, …" beside the row that turns it on.
        extra = "".join(f", {name}={value}" for name, value in self.extras
                        if not (name in DEFAULTS_OF_LATER_OPTIONS and value == DEFAULTS_OF_LATER_OPTIONS[name])
                        and name != "method_options")
        options = dict(self.extras).get("method_options") or {}
        extra += "".join(f", {name}={value}" for name, value in options.items())
        return f"{self.method} ({self.fusion}){extra}{EXTERNAL_MARK if self.external else ''}"


@dataclass
class ComparisonTable:
    columns: list[Column]
    rows: list[Row]


PaperLookup = Callable[[Row, Column], float | None]


def spec_value(spec: dict[str, Any], name: str) -> Any:
    """A field of a stored spec; an option added later, absent from the specs stored before it,
    has the value that means what those runs did (so old and new runs share a row)."""
    return spec.get(name, DEFAULTS_OF_LATER_OPTIONS.get(name))


def varying_fields(results: Sequence[RunResult]) -> list[str]:
    """Spec fields (other than the layout's) whose value differs between the runs (missmod's own:
    an external run's free-form settings do not split missmod's rows)."""
    results = [r for r in results if not r.external]
    names = list(dict.fromkeys(name for r in results for name in r.spec))
    return [name for name in names
            if name not in LAYOUT_FIELDS and name not in NEUTRAL_FIELDS
            and len({repr(spec_value(r.spec, name)) for r in results}) > 1
            # A method's own options split its rows only where they differ between its runs (another
            # method's options, or having none, are not a difference between rows of one method).
            and (name != "method_options"
                 or len({(r.method, repr(spec_value(r.spec, name))) for r in results}) > len({r.method for r in results}))]


def comparison_table(results: Sequence[RunResult], roles: dict[str, str] | None = None,
                     paper: PaperLookup | None = None) -> ComparisonTable:
    """`results` in creation order (rows and modalities keep the order the sweep gave them;
    rates ascend). `roles`: dataset modality → the paper's role name, for the column labels."""
    extras_names = varying_fields(results)
    roles = roles or {}
    modalities = list(dict.fromkeys(r.missing_modality for r in results))
    rates: dict[str, list[float]] = {m: sorted({r.missing_rate for r in results if r.missing_modality == m})
                                     for m in modalities}
    columns = [Column(m, rate, roles.get(m)) for m in modalities for rate in rates[m]]
    column_index = {(c.missing_modality, c.missing_rate): i for i, c in enumerate(columns)}

    rows: dict[tuple, Row] = {}
    for r in results:
        extras = tuple((name, spec_value(r.spec, name)) for name in extras_names if not r.external or name in r.spec)
        key = (r.method, r.fusion, repr(extras), r.external)
        row = rows.get(key)
        if row is None:
            row = rows[key] = Row(r.method, r.fusion, extras, [Cell() for _ in columns], external=r.external)
        add_result(row.cells[column_index[(r.missing_modality, r.missing_rate)]], r)
    table = ComparisonTable(columns=columns, rows=list(rows.values()))
    mark_best(table, paper)
    return table


def add_result(cell: Cell, r: RunResult) -> None:
    """One run into its cell: a value when it succeeded with a finite accuracy, pending while it
    is queued or running."""
    if r.state == "succeeded" and r.test_accuracy is not None and math.isfinite(r.test_accuracy):
        cell.values.append(r.test_accuracy)
        cell.run_ids.append(r.run_id)
        cell.seeds.append(r.seed)
    elif r.state in ("queued", "running"):
        cell.pending += 1


def mark_best(table: ComparisonTable, paper: PaperLookup | None = None) -> None:
    """Mark the highest mean of each column (and set the paper's number of each cell)."""
    for i, column in enumerate(table.columns):
        means = [row.cells[i].mean for row in table.rows if row.cells[i].mean is not None]
        top = max(means, default=None)
        for row in table.rows:
            cell = row.cells[i]
            cell.best = top is not None and cell.mean is not None and math.isclose(cell.mean, top, abs_tol=1e-12)
            if paper is not None:
                cell.paper = paper(row, column)


@dataclass
class TrendSeries:
    """One line of the missing-rate trend: a row of the table over one missing modality."""

    label: str
    method: str
    fusion: str
    missing_modality: str
    role: str | None
    rates: list[float]
    means: list[float]
    stds: list[float | None]
    counts: list[int]
    source: str = "sweep"  # or "paper"
    external: bool = False
    # Per point, against the reference of its column (once the table was compared, paired.py):
    # the mean paired difference, the Holm-adjusted p-value, and "win", "loss", "reference" or None.
    diffs: list[float | None] = field(default_factory=list)
    p_adjusted: list[float | None] = field(default_factory=list)
    marks: list[str | None] = field(default_factory=list)


def missing_rate_trend(table: ComparisonTable) -> list[TrendSeries]:
    """Test accuracy against missing rate, one line per row and missing modality (the cells
    with at least one finished seed), then the paper's lines where it reports the setting."""
    series: list[TrendSeries] = []
    paper_series: list[TrendSeries] = []
    modalities = list(dict.fromkeys(c.missing_modality for c in table.columns))
    for modality in modalities:
        indices = [i for i, c in enumerate(table.columns) if c.missing_modality == modality]
        role = table.columns[indices[0]].role
        for row in table.rows:
            cells = [(table.columns[i].missing_rate, row.cells[i]) for i in indices]
            ours = [(rate, cell) for rate, cell in cells if cell.n]
            series.append(TrendSeries(
                label=row.label, method=row.method, fusion=row.fusion, missing_modality=modality, role=role,
                rates=[rate for rate, _ in ours], means=[cell.mean for _, cell in ours],
                stds=[cell.std for _, cell in ours], counts=[cell.n for _, cell in ours], external=row.external,
                diffs=[cell.paired.diff if cell.paired else None for _, cell in ours],
                p_adjusted=[cell.paired.p_adjusted if cell.paired else None for _, cell in ours],
                marks=["reference" if cell.is_reference else cell.paired.mark if cell.paired else None
                       for _, cell in ours],
            ))
            reported = [(rate, cell.paper) for rate, cell in cells if cell.paper is not None]
            if reported:
                paper_series.append(TrendSeries(
                    label=f"paper: {row.label}", method=row.method, fusion=row.fusion, missing_modality=modality,
                    role=role, rates=[rate for rate, _ in reported], means=[value for _, value in reported],
                    stds=[None] * len(reported), counts=[0] * len(reported), source="paper",
                ))
    return series + paper_series
