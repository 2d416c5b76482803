"""The paired statistics (backend/paired_statistics.py) against values computed by hand (the
working is in each test) or by scipy's own implementations, then on a small table
(backend/sweeps/paired.py)."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
from scipy import stats

from backend import paired_statistics as statistics
from backend.runs.predictions import RunPredictions, pack_labels, unpack_labels
from backend.sweeps import paired
from backend.sweeps.analysis import RunResult, comparison_table, missing_rate_trend
from backend.sweeps.export import LatexSetting, table_csv, table_latex


# --- the statistics ----------------------------------------------------------------------


def test_sign_flip_p_of_three_positive_differences_is_a_quarter():
    # 8 sign assignments; only all + and all − reach |sum| = 0.06.
    assert statistics.sign_flip_p([0.01, 0.02, 0.03]) == 0.25
    assert statistics.smallest_sign_flip_p(3) == 0.25


def test_sign_flip_p_counts_the_assignments_at_least_as_extreme():
    # d = 1, 2, −3, 4, 5: observed sum 9 of a possible 15. A sign assignment that negates a subset
    # of sum t gives 15 − 2t, so |sum| ≥ 9 ⇔ t ≤ 3 or t ≥ 12: {}, {1}, {2}, {3}, {1,2} and their
    # complements: 10 of 32.
    assert statistics.sign_flip_p([1, 2, -3, 4, 5]) == 10 / 32
    assert statistics.sign_flip_p([0.0, 0.0, 0.0]) == 1.0
    assert statistics.sign_flip_p([]) == 1.0


def test_sign_flip_p_matches_scipys_exact_permutation_test():
    rng = np.random.default_rng(7)
    for n in (4, 6, 9):
        d = rng.normal(0.5, 1.0, n)
        expected = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue
        assert statistics.sign_flip_p(d) == pytest.approx(expected, abs=1e-12)


def test_seeds_the_exact_test_needs_to_reach_alpha():
    # 2^(1−n) ≤ 0.05 ⇔ n ≥ 1 + log2(20) = 5.32: six seeds; five give at best 0.0625.
    assert statistics.seeds_to_reach(0.05) == 6
    assert statistics.smallest_sign_flip_p(5) == 0.0625
    assert statistics.smallest_sign_flip_p(6) == 0.03125


def test_mean_interval_is_the_student_t_interval():
    # d = 1…5: mean 3, sd √2.5, se √0.5, t(0.975, 4) = 2.7764451 → half-width 1.9632432.
    mean, low, high = statistics.mean_interval([1, 2, 3, 4, 5])
    assert mean == 3
    assert low == pytest.approx(3 - 1.9632432, abs=1e-6)
    assert high == pytest.approx(3 + 1.9632432, abs=1e-6)
    assert statistics.mean_interval([0.02]) == (0.02, None, None)


def test_a_difference_below_1e_12_is_reported_as_zero():
    # Accuracies 0.9, 0.8, 0.4 against 0.8, 0.6, 0.7: the differences cancel, but in floating
    # point their mean is 3.7e-17.
    differences = [a - b for a, b in zip([0.9, 0.8, 0.4], [0.8, 0.6, 0.7])]
    assert np.mean(differences) != 0
    mean, low, high = statistics.mean_interval(differences)
    assert mean == 0.0 and low < 0 < high
    assert statistics.mean_interval([0.1 - 0.2 + 0.1] * 2) == (0.0, 0.0, 0.0)


def test_wins_ties_losses():
    assert statistics.wins_ties_losses([0.01, 0.0, -0.02, 0.03, 0.0]) == (2, 2, 1)


def test_holm_on_a_small_family():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 → running max 0.06.
    assert statistics.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert statistics.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert statistics.holm([]) == []


def test_mcnemar_exact_p_on_a_known_two_by_two():
    # Discordant 10 and 2: 2·P(Binomial(12, ½) ≤ 2) = 2·(1 + 12 + 66)/4096 = 158/4096.
    assert statistics.mcnemar_p(10, 2) == pytest.approx(158 / 4096)
    assert statistics.mcnemar_p(2, 10) == pytest.approx(158 / 4096)
    assert statistics.mcnemar_p(0, 0) == 1.0
    assert statistics.mcnemar_p(5, 5) == 1.0
    reference = np.array([1, 1, 1, 0, 0, 1], bool)
    other = np.array([1, 0, 0, 1, 0, 1], bool)
    assert statistics.discordant_pairs(reference, other) == (2, 1)


def test_seeds_needed_for_an_effect_of_one_standard_deviation():
    # A paired t test at 0.05 needs 10 pairs for 80% power at an effect size of 1 (power 0.803).
    half = 1 / math.sqrt(2)
    assert statistics.seeds_needed([1 - half, 1 + half]) == 10
    assert statistics.seeds_needed([0.0, 0.0]) is None
    assert statistics.seeds_needed([0.02, 0.02, 0.02]) == 6  # no spread: what the exact test needs


def test_packed_labels_round_trip_in_one_byte_each():
    labels = [0, 9, 3, 255, 1]
    packed = pack_labels(labels, 256)
    assert len(packed) == 8  # base64 of 5 bytes
    assert unpack_labels(packed, 256).tolist() == labels
    assert unpack_labels(pack_labels([300, 2], 400), 400).tolist() == [300, 2]


# --- a table's comparisons ----------------------------------------------------------------


def result(run_id: int, method: str, seed: int, accuracy: float, rate: float = 0.9) -> RunResult:
    spec = {"dataset": "digits", "method": method, "fusion": "add", "missing_modality": "bottom",
            "missing_rate": rate, "seed": seed}
    return RunResult(run_id, "succeeded", method, "add", "bottom", rate, seed, accuracy, spec)


def small_table(seeds: int = 6):
    """mle beats zero_padding by 2 points on every seed; lower_bound loses 1 to 3 points."""
    results, run_id = [], 0
    for seed in range(seeds):
        base = 0.90 + 0.01 * (seed % 3)
        for method, accuracy in (("mle", base + 0.02), ("zero_padding", base), ("lower_bound", base - 0.01 - 0.01 * (seed % 3))):
            run_id += 1
            results.append(result(run_id, method, seed, accuracy))
    return comparison_table(results)


def cell(table, method):
    return next(row for row in table.rows if row.method == method).cells[0]


def test_default_reference_is_the_best_baseline_and_holm_marks_the_cells():
    table = small_table(6)
    summary = paired.compare_table(table)
    assert summary.references == ["zero_padding (add)"]
    assert cell(table, "zero_padding").is_reference and cell(table, "zero_padding").paired is None
    mle = cell(table, "mle").paired
    assert mle.reference == "zero_padding (add)"
    assert mle.diff == pytest.approx(0.02)
    assert (mle.wins, mle.ties, mle.losses) == (6, 0, 0)
    assert mle.p_seeds == pytest.approx(2 / 64)
    assert mle.ci_low == pytest.approx(0.02) and mle.ci_high == pytest.approx(0.02)
    lower = cell(table, "lower_bound").paired
    assert lower.p_seeds == pytest.approx(2 / 64) and lower.losses == 6
    # Holm over the two comparisons: both 1/32, so both adjusted to 2/32 = 0.0625 > 0.05.
    assert mle.p_adjusted == pytest.approx(0.0625) and not mle.significant and mle.mark is None
    assert summary.tests == 2 and summary.significant == 0
    # With one comparison (mle alone against zero_padding) no correction is needed: a win.
    only = paired.compare_table(comparison_table([r for r in _results_of(table) if r.method != "lower_bound"]))
    assert only.significant == 1


def _results_of(table):
    results = []
    for row in table.rows:
        for c in row.cells:
            for run_id, seed, value in zip(c.run_ids, c.seeds, c.values):
                results.append(result(run_id, row.method, seed, value))
    return results


def test_a_named_reference_row_or_method():
    table = small_table(3)
    summary = paired.compare_table(table, reference="mle")
    assert summary.references == ["mle (add)"]
    assert cell(table, "zero_padding").paired.diff == pytest.approx(-0.02)
    assert paired.compare_table(table, reference="lower_bound (add)").references == ["lower_bound (add)"]
    with pytest.raises(paired.UnknownReference, match="no row 'hgr'"):
        paired.compare_table(table, reference="hgr")


def test_the_note_says_three_seeds_cannot_reach_significance_and_how_many_would():
    table = small_table(3)
    summary = paired.compare_table(table)
    assert summary.smallest_p == 0.25 and summary.seeds_for_alpha == 6
    assert "With 3 seeds, no seed-level test can reach significance" in summary.note
    assert "at least 0.25" in summary.note and "needs 6 seeds or more" in summary.note
    assert "seeds would be needed" in summary.note


def test_mcnemar_over_stored_predictions_pooled_over_seeds():
    table = small_table(5)
    labels = np.arange(100) % 10
    predictions = {}
    for row in table.rows:
        c = row.cells[0]
        for run_id, seed in zip(c.run_ids, c.seeds):
            predicted = labels.copy()
            wrong = {"mle": 2, "zero_padding": 6, "lower_bound": 7}[row.method]
            predicted[:wrong] = (labels[:wrong] + 1) % 10  # the first `wrong` samples are missed
            predictions[run_id] = RunPredictions(predicted, labels)
    summary = paired.compare_table(table, test="samples", predictions=predictions)
    mle = cell(table, "mle").paired
    # Per seed mle alone is right on samples 2…5 (4), zero_padding alone on none: pooled (0, 20).
    assert mle.discordant == (0, 4 * 5)
    assert mle.p_samples == pytest.approx(2 * 0.5**20)
    assert mle.test == "samples" and mle.p_value == mle.p_samples
    assert mle.significant and mle.mark == "win"
    assert cell(table, "lower_bound").paired.discordant == (5, 0)  # sample 6, each seed
    assert summary.with_predictions == 2
    # A run without predictions: that cell falls back to the seed-level test.
    del predictions[cell(table, "lower_bound").run_ids[0]]
    summary = paired.compare_table(table, test="samples", predictions=predictions)
    assert cell(table, "lower_bound").paired.test == "seeds" and cell(table, "lower_bound").paired.p_samples is None
    assert "use the seed-level test" in summary.note


def test_exports_and_trend_carry_the_comparison():
    table = small_table(6)
    only_mle = comparison_table([r for r in _results_of(table) if r.method != "lower_bound"])
    summary = paired.compare_table(only_mle)
    latex = table_latex(only_mle, LatexSetting(7, "why", ["digits"]), summary)
    mle_line = next(line for line in latex.splitlines() if line.startswith("mle"))
    assert r"$^{\uparrow}$" in mle_line
    zero_line = next(line for line in latex.splitlines() if line.startswith(r"zero\_padding"))
    assert r"$^{\dagger}$" in zero_line
    assert "Holm-adjusted" in latex
    rows = list(csv.DictReader(io.StringIO(table_csv(only_mle))))
    mle_row = next(row for row in rows if row["method"] == "mle")
    assert mle_row["bottom 90% reference"] == "zero_padding (add)"
    assert mle_row["bottom 90% significant"] == "win"
    assert float(mle_row["bottom 90% diff"]) == pytest.approx(2.0)
    assert mle_row["bottom 90% mean"]  # the existing columns are still there
    trend = {s.method: s for s in missing_rate_trend(only_mle)}
    assert trend["mle"].marks == ["win"] and trend["zero_padding"].marks == ["reference"]


def external(run_id: int, method: str, seed: int, accuracy: float) -> RunResult:
    return RunResult(**{**result(run_id, method, seed, accuracy).__dict__, "external": True})


def test_external_rows_are_not_paired_unverified_and_stay_outside_holms_family():
    table = small_table(6)
    own = paired.compare_table(table)
    mle_alone = cell(table, "mle").paired.p_adjusted
    # A run trained elsewhere per seed, better than every baseline: not the default reference,
    # not paired by seed (its split is not verified), and missmod's cells keep their adjustment.
    results = _results_of(table) + [external(100 + seed, "their_method", seed, 0.99) for seed in range(6)]
    mixed = comparison_table(results)
    summary = paired.compare_table(mixed, pairing=paired.pairing_by_origin(results))
    theirs = next(row for row in mixed.rows if row.external).cells[0]
    assert summary.references == own.references == ["zero_padding (add)"]
    assert theirs.paired is None and theirs.pairing_verified is False
    assert summary.tests == own.tests == 2 and summary.not_verified == 1
    assert cell(mixed, "mle").paired.p_adjusted == mle_alone
    assert "pairing not verified" in summary.note
    # Verified (as a declared split will make it): compared, but outside the family by default…
    verified = paired.compare_table(mixed, pairing=lambda run_id: paired.Pairing.verified)
    assert theirs.pairing_verified and theirs.paired.in_family is False and theirs.paired.p_adjusted is None
    assert verified.tests == 2 and verified.outside_family == 1
    assert cell(mixed, "mle").paired.p_adjusted == mle_alone
    # …and in it when asked: three comparisons now share the correction.
    included = paired.compare_table(mixed, pairing=lambda run_id: paired.Pairing.verified, include_external=True)
    assert included.tests == 3 and included.references == ["their_method (add) [external]"]
    # A cell whose reference is an unverified external row is not paired either.
    paired.compare_table(mixed, reference="their_method (add) [external]", pairing=paired.pairing_by_origin(results))
    assert cell(mixed, "mle").paired is None and not cell(mixed, "mle").pairing_verified
    rows = list(csv.DictReader(io.StringIO(table_csv(mixed))))
    assert next(r for r in rows if r["method"] == "mle")["bottom 90% reference"] == "(pairing not verified)"


def test_latex_names_the_setting_labels_itself_and_explains_only_the_marks_it_uses():
    setting = LatexSetting(12, "digits: 2 methods × 6 seeds (12 runs)", ["digits"])
    table = comparison_table([r for r in _results_of(small_table(6)) if r.method != "lower_bound"])
    latex = table_latex(table, setting, paired.compare_table(table))
    caption = next(line for line in latex.splitlines() if line.startswith(r"\caption"))
    assert r"\label{tab:missmod-sweep-12}" in latex
    for named in ("on digits", "modality bottom missing from 90\\% of the training samples", "complete test set",
                  "over 6 seeds (0--5)", r"$\uparrow$/$\downarrow$", r"($\dagger$)", "sign-flip"):
        assert named in caption, named
    assert "2 methods" not in caption and "% missmod sweep 12: digits: 2 methods" in latex  # the name: a comment
    # One row: nothing is compared, so no mark and no legend.
    one = comparison_table([r for r in _results_of(table) if r.method == "mle"][:3])
    latex = table_latex(one, setting, paired.compare_table(one))
    assert r"\dagger" not in latex and r"\uparrow" not in latex and "over 3 seeds (0--2)" in latex
    # Compared, none significant (3 seeds): † is explained, ↑/↓ are not mentioned.
    three = comparison_table([r for r in _results_of(table) if r.seed < 3])
    latex = table_latex(three, setting, paired.compare_table(three))
    caption = next(line for line in latex.splitlines() if line.startswith(r"\caption"))
    assert r"$\dagger$: zero\_padding (add)" in caption and r"\uparrow" not in caption
    assert "no difference is significant" in caption and "cannot reach" not in caption
