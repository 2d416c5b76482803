"""How a comparison changes with the selection rule, from runs already trained (docs/studies.md,
"The selection rule").

Every run records its validation accuracy, validation loss and test accuracy at each epoch, so
the epoch any rule would have selected (training/selection.py), and the test accuracy of that
epoch, can be read back without retraining. Each rule gives its own comparison table — the same
runs, the same rows and columns, each cell's mean ± std over seeds and its paired comparison with
its column's reference (exact sign-flip test over seeds: the test predictions are kept for the
recorded epoch only) — and the rows' ranks per column, so a ranking that flips with the rule shows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from training.selection import DEFAULT_SELECTION_RULE, SELECTION_RULES, EpochScore, select_epoch

from ..runs.models import MetricPoint
from .analysis import ComparisonTable, RunResult, comparison_table
from .paired import compare_table
from .schemas import ColumnOut, ComparisonOut, PairedOut

EPOCH_METRICS = ("val_accuracy", "val_loss", "test_accuracy")


class RuleCellOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    mean: float | None
    std: float | None
    n: int
    rank: int | None = Field(description="1: the best mean of its column under this rule (equal means share a rank)")
    paired: PairedOut | None = None
    is_reference: bool = False


class RuleRowOut(BaseModel):
    label: str
    cells: list[RuleCellOut]


class RuleTableOut(BaseModel):
    rule: str
    recorded: bool = Field(description="The rule the runs themselves used: their reported figures")
    rows: list[RuleRowOut]
    comparison: ComparisonOut | None


class SelectionRulesOut(BaseModel):
    """The same runs' test accuracy under each selection rule, read from the validation and test
    figures each epoch recorded: no retraining."""

    recorded_rule: str | None = Field(description="The rule the runs used (null: they used different ones)")
    columns: list[ColumnOut]
    rules: list[RuleTableOut]
    ranking_changes: list[str] = Field(description="Where a rule orders a column's rows otherwise than the "
                                                   "recorded rule, in plain words")
    runs_without_epochs: list[int] = Field(description="Runs left out: they recorded no per-epoch validation "
                                                       "accuracy (trained elsewhere, or cancelled before an epoch)")


def epoch_scores(session: Session, run_ids: Iterable[int]) -> dict[int, list[tuple[EpochScore, float | None]]]:
    """Per run, each epoch's validation accuracy and loss, with its test accuracy."""
    ids = sorted(set(run_ids))
    by_epoch: dict[tuple[int, int], dict[str, float | None]] = defaultdict(dict)
    for start in range(0, len(ids), 500):  # bounded IN lists
        rows = session.execute(select(MetricPoint.run_id, MetricPoint.epoch, MetricPoint.name, MetricPoint.value)
                               .where(MetricPoint.run_id.in_(ids[start:start + 500]),
                                      MetricPoint.name.in_(EPOCH_METRICS), MetricPoint.epoch >= 1))
        for run_id, epoch, name, value in rows:
            by_epoch[(run_id, epoch)][name] = value
    out: dict[int, list[tuple[EpochScore, float | None]]] = defaultdict(list)
    for (run_id, epoch), values in sorted(by_epoch.items()):
        out[run_id].append((EpochScore(epoch, values.get("val_accuracy"), values.get("val_loss")),
                            values.get("test_accuracy")))
    return dict(out)


def accuracy_under(rule: str, epochs: Sequence[tuple[EpochScore, float | None]]) -> float | None:
    """The test accuracy of the epoch `rule` selects."""
    test = {score.epoch: accuracy for score, accuracy in epochs}
    chosen = select_epoch(rule, [score for score, _ in epochs])
    return None if chosen is None else test.get(chosen.epoch)


def accuracies_by_rule(session: Session, run_ids: Iterable[int]) -> tuple[dict[str, dict[int, float]], list[int]]:
    """rule → {run id: test accuracy of the epoch it selects}, and the runs with no epochs."""
    ids = sorted(set(run_ids))
    scores = epoch_scores(session, ids)
    by_rule = {rule: {run_id: accuracy for run_id in ids
                      if run_id in scores and (accuracy := accuracy_under(rule, scores[run_id])) is not None}
               for rule in SELECTION_RULES}
    return by_rule, [run_id for run_id in ids if run_id not in scores]


def _ranks(table: ComparisonTable, column: int) -> dict[int, int]:
    """Row index → rank by mean in the column (1 is best; equal means share a rank)."""
    means = {i: row.cells[column].mean for i, row in enumerate(table.rows) if row.cells[column].mean is not None}
    return {i: 1 + sum(other > mean for other in means.values()) for i, mean in means.items()}


def _order(table: ComparisonTable, column: int) -> str:
    ranks = _ranks(table, column)
    groups: dict[int, list[str]] = defaultdict(list)
    for i, rank in sorted(ranks.items(), key=lambda item: (item[1], item[0])):
        groups[rank].append(table.rows[i].label)
    return " > ".join(" = ".join(labels) for _, labels in sorted(groups.items()))


def sensitivity(build: Callable[[Mapping[int, float]], ComparisonTable], accuracies: Mapping[str, Mapping[int, float]],
                recorded: str | None, missing: list[int], reference: str | None = None) -> SelectionRulesOut:
    """Each rule's table, built by `build` from the runs' test accuracy under that rule."""
    baseline = recorded or DEFAULT_SELECTION_RULE
    tables: dict[str, ComparisonTable] = {}
    out_rules: list[RuleTableOut] = []
    for rule in SELECTION_RULES:
        table = tables[rule] = build(accuracies[rule])
        summary = compare_table(table, reference=reference, test="seeds")
        ranks = [_ranks(table, column) for column in range(len(table.columns))]
        out_rules.append(RuleTableOut(
            rule=rule, recorded=rule == recorded,
            rows=[RuleRowOut(label=row.label, cells=[
                RuleCellOut(mean=cell.mean, std=cell.std, n=cell.n, rank=ranks[j].get(i),
                            paired=PairedOut.model_validate(cell.paired) if cell.paired is not None else None,
                            is_reference=cell.is_reference)
                for j, cell in enumerate(row.cells)]) for i, row in enumerate(table.rows)],
            comparison=ComparisonOut.model_validate(summary)))
    columns = tables[baseline].columns
    changes = []
    for j, column in enumerate(columns):
        usual = _order(tables[baseline], j)
        for rule in SELECTION_RULES:
            order = _order(tables[rule], j)
            if rule != baseline and order != usual and order:
                changes.append(f"{column.label}: {rule} ranks {order}, where {baseline} ranks {usual}.")
    return SelectionRulesOut(recorded_rule=recorded, columns=[ColumnOut.model_validate(c) for c in columns],
                             rules=out_rules, ranking_changes=changes, runs_without_epochs=missing)


def recorded_rule_of(specs: Iterable[Mapping]) -> str | None:
    """The selection rule the runs share (a spec from before the option: the default), or None."""
    rules = {spec.get("selection_rule", DEFAULT_SELECTION_RULE) for spec in specs}
    return rules.pop() if len(rules) == 1 else None


def sweep_sensitivity(session: Session, results: Sequence[RunResult], roles: Mapping[str, str],
                      reference: str | None = None) -> SelectionRulesOut:
    """A sweep's comparison table under every selection rule."""
    ours = [r for r in results if r.state == "succeeded" and not r.external]
    accuracies, missing = accuracies_by_rule(session, [r.run_id for r in ours])

    def build(accuracy: Mapping[int, float]) -> ComparisonTable:
        return comparison_table([replace(r, test_accuracy=accuracy.get(r.run_id)) for r in ours], dict(roles))

    return sensitivity(build, accuracies, recorded_rule_of(r.spec for r in ours), missing, reference)
