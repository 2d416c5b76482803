"""Paired comparisons of a sweep's methods: every method run with the same seed sees the same
split, the same missing samples and the same test set, so each cell is compared with a
reference cell of its column seed by seed, and, where the runs stored their test predictions,
test sample by test sample. The method is documented in docs/statistics.md.

For each cell against the reference cell of its column:
- the paired differences d_s = accuracy(cell, seed s) − accuracy(reference, seed s), over the
  seeds both have; their mean, a 95% t interval, and wins / ties / losses;
- the seed-level test (the default): an exact two-sided sign-flip permutation test of mean d = 0
  over all 2^n sign assignments (a Monte Carlo of 2^20 draws above 20 seeds). It asks whether the
  method is better *as a training procedure*, so the seed-to-seed spread counts as noise; with n
  seeds its p-value can never fall below 2^(1−n) (0.25 at 3 seeds, 0.0625 at 5; 6 seeds reach 0.05);
- the sample-level test: McNemar's exact test on the test samples (videos, where accuracy is
  per video), the discordant pairs pooled over the seeds (under the null each seed's discordant
  pairs split evenly, so their sum is binomial(b + c, ½)). It asks whether these trained models
  differ on this test set, so it is far more powerful but says nothing about new seeds;
- Holm's step-down correction over every cell of the table tested; a cell is a significant win or
  loss only when its adjusted p-value is below alpha.

Runs trained elsewhere (external rows) are paired only where their pairing is verified (`Pairing`:
a run that shows it used missmod's split and missing samples for its seed); an unverified cell is
marked, never paired silently by seed. Verified or not, they stay outside Holm's family unless
asked (`include_external`), so logging a run from elsewhere never changes the adjustment of
missmod's own cells.

Plain functions over the table (no database); the statistics themselves are
backend/paired_statistics.py's, shared with the comparison of runs side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import numpy as np

from ..paired_statistics import (ALPHA, TARGET_POWER, TIE, RunPredictions, discordant_pairs,
                                 holm, mcnemar_p, mean_interval, seeds_needed, seeds_to_reach, sign_flip_p,
                                 smallest_sign_flip_p, wins_ties_losses)
from ..refused import Refused
from .analysis import Cell, ComparisonTable, Row, RunResult

Test = Literal["seeds", "samples"]
BASELINE_EXCLUDED = frozenset({"mle"})  # the paper's method; every other method is a baseline


class UnknownReference(Refused):
    """The reference asked for (the `reference` parameter) is neither a row label nor a method of
    the table: a 422 naming it."""

    def __init__(self, reference: str, message: str):
        super().__init__([{"type": "value_error", "loc": ("query", "reference"), "input": reference, "msg": message}])


class Pairing(Enum):
    """Whether a run may be paired by seed with missmod's runs of its setting."""

    verified = "verified"  # the seed fixes its split and missing samples: missmod's own runs
    not_verified = "not_verified"  # trained elsewhere, with no split shown to be missmod's


PairingOf = Callable[[int], Pairing]  # run id → its pairing


def pairing_by_origin(results: Sequence[RunResult], verified: Collection[int] = frozenset()) -> PairingOf:
    """missmod's own runs are verified (training/protocol.py derives the split and the missing
    samples from the seed); a run trained elsewhere is verified only when it is in `verified`: its
    test predictions were checked on missmod's split for its setting when it was logged
    (backend/runs/live_runs.py: protocol_result, the run's info.protocol). Any other is not:
    it declared no split shown to be missmod's."""
    external = {r.run_id for r in results if r.external} - set(verified)
    return lambda run_id: Pairing.not_verified if run_id in external else Pairing.verified


def _pairing_of_rows(table: ComparisonTable) -> PairingOf:
    external = {run_id for row in table.rows if row.external for c in row.cells for run_id in c.run_ids}
    return lambda run_id: Pairing.not_verified if run_id in external else Pairing.verified


# --- a table's comparisons ----------------------------------------------------------------


@dataclass
class Paired:
    """A cell against the reference cell of its column."""

    reference: str  # the reference row's label
    n: int  # seeds both have
    diff: float | None  # mean paired difference (fraction; positive: the cell is better)
    ci_low: float | None
    ci_high: float | None
    wins: int
    ties: int
    losses: int
    p_seeds: float | None  # exact sign-flip over seeds
    p_samples: float | None  # McNemar over test samples, pooled over seeds; None without stored predictions
    discordant: tuple[int, int] | None  # (only the reference right, only the cell right), pooled
    test: Test  # which of the two p_value is
    seeds_needed: int | None
    p_value: float | None = None
    p_adjusted: float | None = None  # None outside Holm's family
    significant: bool = False
    in_family: bool = True  # in Holm's family: missmod's own cells, external ones only when included

    @property
    def mark(self) -> str | None:
        if not self.significant or self.diff is None:
            return None
        return "win" if self.diff > 0 else "loss"


@dataclass
class PairedSummary:
    """What the table's comparisons were and what they can show, for the page to say plainly."""

    reference: str | None  # as asked (None: the best baseline of each column)
    references: list[str | None]  # per column, the reference row's label
    test: Test
    alpha: float
    tests: int  # cells tested: Holm's family
    max_seeds: int  # the most seeds any compared cell pairs
    smallest_p: float  # the smallest p the seed-level test can give with max_seeds
    seeds_for_alpha: int  # seeds the exact test needs to reach alpha at all
    significant: int  # cells marked after the correction
    with_predictions: int  # tested cells whose every pair has stored test predictions
    note: str
    cells_without_predictions: int = 0
    notes: list[str] = field(default_factory=list)
    include_external: bool = False  # external rows joined the family (and could be the reference)
    outside_family: int = 0  # external cells compared but left out of Holm's family
    not_verified: int = 0  # cells not paired: a run trained elsewhere whose pairing is not verified


def _paired_values(cell: Cell) -> dict[int, tuple[float, int]]:
    """seed → (accuracy, run id); the first run of a seed when a cell has two."""
    out: dict[int, tuple[float, int]] = {}
    for seed, value, run_id in zip(cell.seeds, cell.values, cell.run_ids):
        out.setdefault(seed, (value, run_id))
    return out


def _reference_rows(table: ComparisonTable, reference: str | None, include_external: bool,
                    pairing: PairingOf) -> list[Row | None]:
    """The reference row of each column: the named row, the best row of the named method, or
    (by default) the best baseline — the best row of a method other than mle; the best row when
    the table has no baseline. A method's rows and the default are missmod's own rows, and
    external rows whose runs are all verified when include_external; a label names any row."""
    rows = table.rows

    def eligible(row: Row) -> bool:
        return not row.external or (include_external and all(
            pairing(run_id) is Pairing.verified for cell in row.cells for run_id in cell.run_ids))

    own = [row for row in rows if eligible(row)] or rows
    if reference is not None:
        named = [row for row in rows if row.label == reference]
        if named:
            return [named[0]] * len(table.columns)
        candidates = [row for row in own if row.method == reference] or [row for row in rows if row.method == reference]
        if not candidates:
            raise UnknownReference(reference, f"no row {reference!r} in this table (a row label such as "
                                   f"{rows[0].label!r}, or a method: {', '.join(dict.fromkeys(r.method for r in rows))})"
                                   if rows else "the table has no rows")
    else:
        candidates = [row for row in own if row.method not in BASELINE_EXCLUDED] or own
    chosen: list[Row | None] = []
    for i in range(len(table.columns)):
        scored = [row for row in candidates if row.cells[i].mean is not None]
        chosen.append(max(scored, key=lambda row: row.cells[i].mean) if scored else None)  # first of equals
    return chosen


def _paired_runs(cell: Cell, reference_cell: Cell) -> list[int]:
    """The run ids a comparison of these two cells would pair (both sides, the seeds in common)."""
    ours, theirs = _paired_values(cell), _paired_values(reference_cell)
    return [run_id for seed in set(ours) & set(theirs) for run_id in (ours[seed][1], theirs[seed][1])]


def compare_cell(cell: Cell, reference_cell: Cell, reference_label: str, test: Test,
                 predictions: Mapping[int, RunPredictions]) -> Paired | None:
    ours, theirs = _paired_values(cell), _paired_values(reference_cell)
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    differences = [ours[s][0] - theirs[s][0] for s in seeds]
    diff, low, high = mean_interval(differences)
    wins, ties, losses = wins_ties_losses(differences)
    b = c = 0
    complete = True
    for s in seeds:
        mine, reference_predictions = predictions.get(ours[s][1]), predictions.get(theirs[s][1])
        if mine is None or reference_predictions is None or not mine.same_test_set(reference_predictions):
            complete = False
            break
        seed_b, seed_c = discordant_pairs(reference_predictions.correct, mine.correct)
        b, c = b + seed_b, c + seed_c
    p_samples = mcnemar_p(b, c) if complete else None
    p_seeds = sign_flip_p(differences)
    used: Test = "samples" if test == "samples" and p_samples is not None else "seeds"
    return Paired(reference=reference_label, n=len(seeds), diff=diff, ci_low=low, ci_high=high, wins=wins, ties=ties,
                  losses=losses, p_seeds=p_seeds, p_samples=p_samples, discordant=(b, c) if complete else None,
                  test=used, seeds_needed=seeds_needed(differences),
                  p_value=p_samples if used == "samples" else p_seeds)


def compare_table(table: ComparisonTable, *, reference: str | None = None, test: Test = "seeds",
                  predictions: Mapping[int, RunPredictions] | None = None, alpha: float = ALPHA,
                  include_external: bool = False, pairing: PairingOf | None = None) -> PairedSummary:
    """Set `paired` on every cell that has seeds in common with its column's reference cell
    (the reference cell itself is marked `is_reference`), then Holm-correct over them all.
    `pairing` (default: external rows' runs not verified) says which runs may be paired by seed:
    a cell whose comparison would pair an unverified run gets `pairing_verified` False instead.
    External cells join Holm's family only with `include_external`."""
    predictions = predictions or {}
    pairing = pairing or _pairing_of_rows(table)
    references = _reference_rows(table, reference, include_external, pairing)
    compared: list[Paired] = []
    not_verified = 0
    for i, reference_row in enumerate(references):
        for row in table.rows:
            cell = row.cells[i]
            cell.paired, cell.is_reference, cell.pairing_verified = None, reference_row is row, True
            if reference_row is None or reference_row is row:
                continue
            if any(pairing(run_id) is not Pairing.verified for run_id in _paired_runs(cell, reference_row.cells[i])):
                cell.pairing_verified = False
                not_verified += 1
                continue
            paired = compare_cell(cell, reference_row.cells[i], reference_row.label, test, predictions)
            if paired is not None:
                paired.in_family = include_external or not (row.external or reference_row.external)
                cell.paired = paired
                compared.append(paired)
    tested = [p for p in compared if p.in_family]
    for paired, adjusted in zip(tested, holm([p.p_value for p in tested])):
        paired.p_adjusted = adjusted
        paired.significant = adjusted < alpha and paired.diff is not None and abs(paired.diff) > TIE
    max_seeds = max((p.n for p in tested), default=0)
    with_predictions = sum(p.p_samples is not None for p in tested)
    summary = PairedSummary(
        reference=reference, references=[r.label if r is not None else None for r in references], test=test,
        alpha=alpha, tests=len(tested), max_seeds=max_seeds, smallest_p=smallest_sign_flip_p(max_seeds),
        seeds_for_alpha=seeds_to_reach(alpha), significant=sum(p.significant for p in tested),
        with_predictions=with_predictions, cells_without_predictions=len(tested) - with_predictions, note="",
        include_external=include_external, outside_family=len(compared) - len(tested), not_verified=not_verified)
    summary.notes = _notes(summary, tested)
    summary.note = " ".join(summary.notes)
    return summary


def _notes(summary: PairedSummary, tested: list[Paired]) -> list[str]:
    if not tested:
        return ["No cell shares a seed with its reference yet: nothing to compare.", *_external_notes(summary)]
    notes = []
    seed_level = summary.test == "seeds" or summary.with_predictions < summary.tests
    if seed_level and summary.smallest_p >= summary.alpha:
        needed = [p.seeds_needed for p in tested if p.seeds_needed is not None and p.test == "seeds"]
        largest_effect = max((p for p in tested if p.test == "seeds" and p.diff is not None),
                             key=lambda p: abs(p.diff), default=None)
        line = (f"With {summary.max_seeds} seed{'s' if summary.max_seeds != 1 else ''}, no seed-level test can reach "
                f"significance: the exact sign-flip p-value is at least {summary.smallest_p:.3g} however large the "
                f"difference (p < {summary.alpha:g} needs {summary.seeds_for_alpha} seeds or more).")
        if largest_effect is not None and largest_effect.seeds_needed is not None:
            line += (f" For the largest observed difference ({100 * largest_effect.diff:+.2f} points) about "
                     f"{largest_effect.seeds_needed} seeds would be needed for {TARGET_POWER:.0%} power")
            line += (f"; the median over the cells is {int(np.median(needed))}." if len(needed) > 1 else ".")
        notes.append(line)
    if summary.test == "samples" and summary.cells_without_predictions:
        notes.append(f"{summary.cells_without_predictions} of {summary.tests} cells have runs without stored test "
                     "predictions (finished before they were recorded, or trained elsewhere and logged without them): they "
                     "use the seed-level test.")
    notes.append(f"{summary.significant} of {summary.tests} comparisons significant at {summary.alpha:g} after "
                 f"Holm's correction over the table ({'McNemar over test samples, pooled over seeds' if summary.test == 'samples' else 'exact sign-flip test over seeds'}).")
    return notes + _external_notes(summary)


def _external_notes(summary: PairedSummary) -> list[str]:
    notes = []
    if summary.not_verified:
        notes.append(f"{summary.not_verified} comparison{'s' if summary.not_verified != 1 else ''} with runs trained "
                     "elsewhere not made: pairing not verified (those runs declared no split shown to be missmod's, "
                     "so they are not paired by seed).")
    if summary.outside_family:
        notes.append(f"{summary.outside_family} cell{'s' if summary.outside_family != 1 else ''} of runs trained "
                     "elsewhere compared outside Holm's family (include_external adds them).")
    return notes
