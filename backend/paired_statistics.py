"""Paired statistics, plain functions over numbers (no database): what a sweep's comparison
table (backend/sweeps/paired.py) and the comparison of runs side by side (GET
/api/runs/{id}/paired) both use. The method is documented in docs/statistics.md.

- an exact two-sided sign-flip permutation test of mean d = 0 over the seeds' paired differences
  (all 2^n sign assignments; a Monte Carlo of 2^20 draws above 20 seeds): with n seeds its
  p-value can never fall below 2^(1−n) (0.25 at 3 seeds, 0.0625 at 5; 6 seeds reach 0.05);
- McNemar's exact test on the test samples two runs both predicted (the discordant pairs);
- a 95% t interval of the mean difference, wins / ties / losses, the seeds a test would need;
- Holm's step-down correction over a family of tests.

scipy is imported when first needed, so the API starts without it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
CONFIDENCE = 0.95
TARGET_POWER = 0.8
EXACT_SIGN_FLIP_LIMIT = 20  # 2^20 assignments enumerated; above, a seeded Monte Carlo of as many
TIE = 1e-12  # accuracies are ratios of counts: equal ones are equal to the last bit, near enough


@dataclass(frozen=True)
class RunPredictions:
    """One run's predicted and true class per test sample (or video) at the selected epoch."""

    predicted: np.ndarray
    labels: np.ndarray

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    def same_test_set(self, other: "RunPredictions") -> bool:
        """Runs with the same dataset, seed and split see the same test samples in the same order."""
        return len(self.labels) == len(other.labels) and bool(np.array_equal(self.labels, other.labels))


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


def snap_to_zero(value: float) -> float:
    """0 for a value within TIE of it: accuracies are ratios of counts, so a difference that small
    is rounding (0.1 − 0.2 + 0.1 is 2.8e-17 in floating point), never a real one."""
    return 0.0 if abs(value) <= TIE else value


def mean_interval(differences: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float | None, float | None]:
    """Mean of the paired differences and its Student t interval (None below two pairs), each
    reported as 0 within TIE of it."""
    d = np.asarray(differences, dtype=float)
    mean = snap_to_zero(float(d.mean()))
    if len(d) < 2:
        return mean, None, None
    from scipy import stats  # imported here: it costs the API half a second at start-up

    half = float(stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return mean, snap_to_zero(mean - half), snap_to_zero(mean + half)


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
