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

Plain functions over numbers (no database); scipy is imported when first needed, so the API
starts without it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..runs.predictions import RunPredictions
from .analysis import Cell, ComparisonTable, Row

ALPHA = 0.05
CONFIDENCE = 0.95
TARGET_POWER = 0.8
EXACT_SIGN_FLIP_LIMIT = 20  # 2^20 assignments enumerated; above, a seeded Monte Carlo of as many
TIE = 1e-12  # accuracies are ratios of counts: equal ones are equal to the last bit, near enough
BASELINE_EXCLUDED = frozenset({"mle"})  # the paper's method; every other method is a baseline

Test = Literal["seeds", "samples"]


class UnknownReference(ValueError):
    """The reference asked for is neither a row label nor a method of the table."""


# --- the statistics ----------------------------------------------------------------------


def sign_flip_p(differences: Sequence[float]) -> float:
    """Exact two-sided p-value of the sign-flip permutation test of mean(d) = 0: the share of
    the 2^n sign assignments whose |mean| is at least the observed one (the observed counts)."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n == 0:
        return 1.0
    observed = abs(d.sum())
    if n <= EXACT_SIGN_FLIP_LIMIT:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(0).choice((1.0, -1.0), size=(2**EXACT_SIGN_FLIP_LIMIT, n))
    sums = np.abs(signs @ d)
    # A relative tolerance: sums equal to the observed one up to rounding must count as equal.
    return float(np.mean(sums >= observed - 1e-9 * max(1.0, observed)))


def smallest_sign_flip_p(n: int) -> float:
    """The smallest p-value the exact sign-flip test can give with n pairs (all of one sign)."""
    return 1.0 if n <= 1 else 2.0 ** (1 - n)


def seeds_to_reach(alpha: float = ALPHA) -> int:
    """The fewest seeds with which the exact sign-flip test can reach p ≤ alpha at all."""
    return max(2, math.ceil(1 - math.log2(alpha)))


def mean_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float | None, float | None]:
    """Mean of the paired differences and its Student t interval (None below two pairs)."""
    d = np.asarray(differences, dtype=float)
    mean = float(d.mean())
    if len(d) < 2:
        return mean, None, None
    from scipy import stats  # imported here: it costs the API half a second at start-up

    half = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return mean, mean - half, mean + half


def wins_ties_losses(differences: Sequence[float]) -> tuple[int, int, int]:
    d = np.asarray(differences, dtype=float)
    return int((d > TIE).sum()), int((np.abs(d) <= TIE).sum()), int((d < -TIE).sum())


def mcnemar_p(b: int, c: int) -> float:
    """Exact (binomial) two-sided McNemar p-value from the two discordant counts: b pairs where
    only the first is right, c where only the second is."""
    if b + c == 0:
        return 1.0
    from scipy import stats

    return float(stats.binomtest(min(b, c), b + c, 0.5).pvalue)


def discordant_pairs(first_correct: np.ndarray, second_correct: np.ndarray) -> tuple[int, int]:
    """(b, c): samples only the first got right, samples only the second got right."""
    first_correct, second_correct = np.asarray(first_correct, bool), np.asarray(second_correct, bool)
    return int((first_correct & ~second_correct).sum()), int((~first_correct & second_correct).sum())


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (family-wise error control)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def seeds_needed(differences: Sequence[float], alpha: float = ALPHA, power: float = TARGET_POWER,
                 limit: int = 1000) -> int | None:
    """About how many seeds a paired test at level alpha would need to detect the observed mean
    difference with the given power, taking the observed spread as the truth (a two-sided paired
    t test's power, from the noncentral t; never below what the exact test needs to reach alpha).
    None when there is no effect to detect or more than `limit` seeds would be needed."""
    d = np.asarray(differences, dtype=float)
    if len(d) == 0 or abs(d.mean()) <= TIE:
        return None
    floor = seeds_to_reach(alpha)
    spread = d.std(ddof=1) if len(d) > 1 else 0.0
    if spread <= TIE:
        return floor
    from scipy import stats

    effect = abs(d.mean()) / spread
    # The normal approximation's n, then the exact power around it, all candidates in one call
    # (a loop of scalar noncentral-t calls cost a table of 30 cells seconds).
    guess = math.ceil(((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) / effect) ** 2)
    if guess > limit:
        return None
    n = np.arange(max(2, floor, guess - 3), min(limit, max(guess, floor) + 40) + 1)
    critical = stats.t.ppf(1 - alpha / 2, n - 1)
    shift = effect * np.sqrt(n)
    achieved = stats.nct.sf(critical, n - 1, shift) + stats.nct.cdf(-critical, n - 1, shift)
    reached = np.flatnonzero(achieved >= power)
    return int(n[reached[0]]) if len(reached) else None


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
    p_adjusted: float | None = None
    significant: bool = False

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


def _paired_values(cell: Cell) -> dict[int, tuple[float, int]]:
    """seed → (accuracy, run id); the first run of a seed when a cell has two."""
    out: dict[int, tuple[float, int]] = {}
    for seed, value, run_id in zip(cell.seeds, cell.values, cell.run_ids):
        out.setdefault(seed, (value, run_id))
    return out


def _reference_rows(table: ComparisonTable, reference: str | None) -> list[Row | None]:
    """The reference row of each column: the named row, the best row of the named method, or
    (by default) the best baseline — the best row of a method other than mle; the best row when
    the table has no baseline."""
    rows = table.rows
    if reference is not None:
        named = [row for row in rows if row.label == reference]
        if named:
            return [named[0]] * len(table.columns)
        candidates = [row for row in rows if row.method == reference]
        if not candidates:
            raise UnknownReference(f"no row {reference!r} in this table (a row label such as "
                                   f"{rows[0].label!r}, or a method: {', '.join(dict.fromkeys(r.method for r in rows))})"
                                   if rows else "the table has no rows")
    else:
        candidates = [row for row in rows if row.method not in BASELINE_EXCLUDED] or rows
    chosen: list[Row | None] = []
    for i in range(len(table.columns)):
        scored = [row for row in candidates if row.cells[i].mean is not None]
        chosen.append(max(scored, key=lambda row: row.cells[i].mean) if scored else None)  # first of equals
    return chosen


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
                  predictions: Mapping[int, RunPredictions] | None = None, alpha: float = ALPHA) -> PairedSummary:
    """Set `paired` on every cell that has seeds in common with its column's reference cell
    (the reference cell itself is marked `is_reference`), then Holm-correct over them all."""
    predictions = predictions or {}
    references = _reference_rows(table, reference)
    tested: list[Paired] = []
    for i, reference_row in enumerate(references):
        for row in table.rows:
            cell = row.cells[i]
            cell.paired, cell.is_reference = None, reference_row is row
            if reference_row is None or reference_row is row:
                continue
            paired = compare_cell(cell, reference_row.cells[i], reference_row.label, test, predictions)
            if paired is not None:
                cell.paired = paired
                tested.append(paired)
    for paired, adjusted in zip(tested, holm([p.p_value for p in tested])):
        paired.p_adjusted = adjusted
        paired.significant = adjusted < alpha and paired.diff is not None and abs(paired.diff) > TIE
    max_seeds = max((p.n for p in tested), default=0)
    with_predictions = sum(p.p_samples is not None for p in tested)
    summary = PairedSummary(
        reference=reference, references=[r.label if r is not None else None for r in references], test=test,
        alpha=alpha, tests=len(tested), max_seeds=max_seeds, smallest_p=smallest_sign_flip_p(max_seeds),
        seeds_for_alpha=seeds_to_reach(alpha), significant=sum(p.significant for p in tested),
        with_predictions=with_predictions, cells_without_predictions=len(tested) - with_predictions, note="")
    summary.notes = _notes(summary, tested)
    summary.note = " ".join(summary.notes)
    return summary


def _notes(summary: PairedSummary, tested: list[Paired]) -> list[str]:
    if not tested:
        return ["No cell shares a seed with its reference yet: nothing to compare."]
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
                     "predictions (finished before they were recorded): they use the seed-level test.")
    notes.append(f"{summary.significant} of {summary.tests} comparisons significant at {summary.alpha:g} after "
                 f"Holm's correction over the table ({'McNemar over test samples, pooled over seeds' if summary.test == 'samples' else 'exact sign-flip test over seeds'}).")
    return notes


# --- runs side by side (the compare page) ------------------------------------------------------


@dataclass
class RunPair:
    """A run against a reference run on the same test samples."""

    run_id: int
    comparable: bool
    reason: str | None = None  # why not, when not comparable
    samples: int | None = None
    diff: float | None = None  # accuracy over the samples, run − reference
    discordant: tuple[int, int] | None = None  # (only the reference right, only the run right)
    p_value: float | None = None  # exact McNemar
    p_adjusted: float | None = None  # Holm over the runs compared
    significant: bool = False


def compare_runs(reference: RunPredictions | None, others: Mapping[int, RunPredictions | None],
                 alpha: float = ALPHA) -> list[RunPair]:
    """McNemar's exact test of each run against the reference run, sample by sample, where both
    kept their test predictions and saw the same test set (same dataset, seed and split); Holm's
    correction over the runs compared."""
    pairs = []
    for run_id, mine in others.items():
        if reference is None or mine is None:
            pairs.append(RunPair(run_id, False, "no stored test predictions (a run finished before they were kept, "
                                                "or not finished)"))
        elif not mine.same_test_set(reference):
            pairs.append(RunPair(run_id, False, "not the same test set (another dataset, seed or split)"))
        else:
            b, c = discordant_pairs(reference.correct, mine.correct)
            pairs.append(RunPair(run_id, True, samples=len(mine.labels), diff=(c - b) / len(mine.labels),
                                 discordant=(b, c), p_value=mcnemar_p(b, c)))
    tested = [pair for pair in pairs if pair.comparable]
    for pair, adjusted in zip(tested, holm([pair.p_value for pair in tested])):
        pair.p_adjusted = adjusted
        pair.significant = adjusted < alpha and pair.diff != 0
    return pairs
