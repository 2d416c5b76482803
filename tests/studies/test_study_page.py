"""A study end to end with real processes — the API, one worker with two slots, Chromium — as
a researcher runs it from a script, the command line and the browser: three methods on digits
with the same budget and pruning on; trials pruned after an epoch stop there and free their slot;
two trials train at once; the final table carries the paired statistics and the chosen
hyperparameters; the page shows the trials (their test accuracy hidden until the study is
finished), optuna's figures, the final table and the table under every selection rule."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from missmod.client import Client

from tests.client.test_client import cli
from tests.studies.support import SMALL_STUDY
from tests.support import wait_in_page

pytestmark = pytest.mark.browser

EPOCHS = 6


def test_a_study_of_three_methods_on_two_slots_from_a_script_the_cli_and_its_page(
        embedded_settings, start_server, start_worker, page):
    base = start_server(embedded_settings)
    client = Client(base)
    study = client.study({**SMALL_STUDY, "methods": ["mle", "zero_padding", "lower_bound"], "trials": 4,
                          "spec": {"epochs": EPOCHS}})
    assert study.trials["budget"] == 12 and len(study.run_ids) == 2

    # Before any worker: the page lists the first trials, their test accuracy hidden.
    page.goto(f"{base}/studies/{study.id}")
    wait_in_page(page, "document.querySelectorAll('#trials-table tbody tr .test-hidden').length === 1")
    wait_in_page(page, "document.querySelectorAll('#arms-table tbody tr').length === 3")

    start_worker(embedded_settings, {"RUNS_PER_GPU": "2"})
    finished = client.wait(study, progress=False, timeout=600)
    assert finished.state == "finished", finished
    counts = finished.trials
    assert counts["total"] == counts["budget"] == 12 and counts["running"] == 0
    assert [arm["asked"] for arm in finished.arms] == [4, 4, 4]
    assert counts["pruned"] >= 1 and counts["complete"] >= 3

    trials = client.trials(finished)
    runs = {t["run_id"]: client.run(t["run_id"]) for t in trials}
    for trial in trials:
        run = runs[trial["run_id"]]
        if trial["state"] == "pruned":  # stopped right after the epoch it was pruned at, its points kept
            assert run.state == "cancelled" and run.epochs_completed == trial["pruned_epoch"] < EPOCHS
            assert trial["epochs"] == trial["pruned_epoch"]
        else:
            assert trial["state"] == "complete" and run.epochs_completed == EPOCHS and trial["value"] == run.val_accuracy
    intervals = [(datetime.fromisoformat(r.to_dict()["started_at"]), datetime.fromisoformat(r.to_dict()["finished_at"]))
                 for r in runs.values()]
    assert any(a_start < b_end and b_start < a_end for i, (a_start, a_end) in enumerate(intervals)
               for b_start, b_end in intervals[i + 1:]), "no two trials trained at once on the two slots"

    # The answer: a row per method, each cell over the two final seeds, with its hyperparameters.
    table = client.study_table(finished)
    assert [row["label"] for row in table.rows] == ["mle (add)", "zero_padding (add)", "lower_bound (add)"]
    assert all(row["cells"][0]["n"] == 2 for row in table.rows)
    assert sum(row["cells"][0]["is_reference"] for row in table.rows) == 1
    assert sum(row["cells"][0]["paired"] is not None for row in table.rows) == 2
    frame = table.to_pandas()
    assert {"param.lr", "param.weight_decay", "trial", "val_accuracy"} <= set(frame.columns)
    assert list(frame["param.lr"]) == [row["hyperparameters"][0]["params"]["lr"] for row in table.rows]

    shown = cli(base, "--json", "studies", "show", str(study.id))
    assert shown.returncode == 0 and json.loads(shown.stdout)["state"] == "finished"
    exported = cli(base, "studies", "table", str(study.id), "--csv")
    assert exported.returncode == 0 and "bottom 90% lr" in exported.stdout.splitlines()[0]
    rules = cli(base, "studies", "rules", str(study.id))
    assert rules.returncode == 0 and "val_loss" in rules.stdout

    # The page, once finished: test accuracy shown, the figures drawn, the final table and the rules.
    page.goto(f"{base}/studies/{study.id}")
    wait_in_page(page, "document.getElementById('study-page').dataset.state === 'finished'")
    wait_in_page(page, "document.querySelectorAll('#final-table tbody tr').length === 3")
    wait_in_page(page, "document.querySelectorAll('#study-charts .chart[data-figure-state=drawn] .main-svg')"
                       ".length >= 3")
    wait_in_page(page, "document.querySelectorAll('#rules-table tbody tr').length === 12")
    assert page.locator("#trials-table .test-hidden").count() == 0
    assert page.locator("#final-table .hyperparameters").first.inner_text().startswith("trial ")
    traces = page.evaluate("[...document.querySelectorAll('#study-charts .chart[data-traces]')]"
                           ".flatMap((d) => d.dataset.traces.split(','))")
    assert set(traces) <= {"scatter", "bar"} and "scatter" in traces
    # every trace drawn as the type Optuna made it (the pages' plotly.js bundle holds each)
    drawn = page.evaluate("[...document.querySelectorAll('#study-charts .chart[data-traces]')]"
                          ".map((d) => [d.dataset.traces, d.dataset.drawnTraces])")
    assert drawn and all(made == as_drawn for made, as_drawn in drawn), drawn
    pruned_rows = page.locator("#trials-table tbody tr[data-state=pruned]").count()
    assert pruned_rows == sum(t["state"] == "pruned" for t in trials if t["arm"] == 0)
    assert page.js_errors == []

    # The final runs are a sweep: its page links the study, and reads its table under every rule on demand.
    page.goto(f"{base}/sweeps/{finished.final_sweep_id}")
    assert page.locator("#study-note a").get_attribute("href") == f"/studies/{study.id}"
    page.click("#show-rules")
    wait_in_page(page, "document.querySelectorAll('#rules-result tbody tr').length === 12")

    page.goto(f"{base}/studies")
    wait_in_page(page, f"document.querySelector('#studies-table tr[data-study-id=\"{study.id}\"] .state')"
                       f"?.textContent === 'finished'")

    # A trial is an ordinary run with a page of its own, which names its study.
    pruned = next(t for t in trials if t["state"] == "pruned")
    page.goto(f"{base}/runs/{pruned['run_id']}")
    assert page.locator("#run-trial").inner_text().startswith(f"trial {pruned['number']} of study #{study.id}, "
                                                              f"pruned after epoch {pruned['pruned_epoch']}")
