"""A sweep's table under every selection rule, read back from runs already trained (no retraining):
each rule's cell is the mean of the test accuracy at the epoch that rule picks from each run's
recorded epochs, the recorded rule's table is the sweep's own table, and a ranking that flips with
the rule is named. The runs are written as the worker writes them (tests/support/as_worker.py), with
epochs made so that the rules disagree."""

from __future__ import annotations

import pytest

from backend.db import session_factory
from backend.runs import recording
from tests.support import as_worker, queued_run_ids, sample_std

GRID = {"dataset": "digits", "method": ["mle", "lower_bound"], "fusion": "add", "missing_modality": "bottom",
        "missing_rate": 0.9, "seed": [0, 1, 2], "epochs": 3}

# Per method, its three epochs: (val_accuracy, val_loss, test_accuracy); a seed adds 0.01 × seed to
# every test accuracy. mle ties at its best validation accuracy (epochs 1 and 2) and its lowest loss
# is epoch 2; lower_bound ties at epochs 2 and 3 and its lowest loss is epoch 2.
EPOCHS = {"mle": [(0.90, 0.50, 0.70), (0.90, 0.30, 0.95), (0.85, 0.40, 0.90)],
          "lower_bound": [(0.80, 0.60, 0.75), (0.88, 0.35, 0.80), (0.88, 0.50, 0.60)]}
PICKED = {"val_accuracy_earliest": {"mle": 1, "lower_bound": 2}, "val_accuracy_latest": {"mle": 2, "lower_bound": 3},
          "val_loss": {"mle": 2, "lower_bound": 2}, "last_epoch": {"mle": 3, "lower_bound": 3}}


def train_as_recorded(settings, run: dict) -> None:
    """The run's three epochs and its end under the default rule (the earliest best validation accuracy)."""
    epochs = EPOCHS[run["method"]]
    offset = 0.01 * run["seed"]
    with session_factory(settings.database_url)() as session:
        as_worker.start_run(session, run["id"], "test")
        for epoch, (val_accuracy, val_loss, test_accuracy) in enumerate(epochs, start=1):
            as_worker.record_epoch(session, run["id"], epoch, {"val_accuracy": val_accuracy, "val_loss": val_loss,
                                                               "test_accuracy": test_accuracy + offset})
        best = PICKED["val_accuracy_earliest"][run["method"]]
        recording.finish_run(session, run["id"], cancelled=False, test_accuracy=epochs[best - 1][2] + offset,
                             val_accuracy=epochs[best - 1][0], best_epoch=best, classes=["a", "b"],
                             confusion=[[3, 1], [0, 4]], info={})


def test_the_table_under_every_rule_comes_from_the_recorded_epochs_and_names_the_flipped_ranking(
        embedded_settings, client_for):
    client = client_for(embedded_settings)
    sweep = client.post("/api/sweeps", json=GRID).json()
    runs = client.get("/api/runs", params={"sweep": sweep["id"], "limit": 100}).json()["items"]
    assert len(runs) == 6
    for run in runs:
        train_as_recorded(embedded_settings, run)
    sent = len(queued_run_ids(embedded_settings))

    answer = client.get(f"/api/sweeps/{sweep['id']}/selection-rules")
    assert answer.status_code == 200, answer.text
    rules = answer.json()
    assert rules["recorded_rule"] == "val_accuracy_earliest" and rules["runs_without_epochs"] == []
    assert [r["rule"] for r in rules["rules"]] == list(PICKED)
    for rule in rules["rules"]:
        assert rule["recorded"] == (rule["rule"] == "val_accuracy_earliest")
        by_label = {row["label"]: row["cells"][0] for row in rule["rows"]}
        for method in ("mle", "lower_bound"):
            picked = EPOCHS[method][PICKED[rule["rule"]][method] - 1][2]
            accuracies = [picked + 0.01 * seed for seed in range(3)]
            cell = by_label[f"{method} (add)"]
            assert cell["n"] == 3, rule["rule"]
            assert cell["mean"] == pytest.approx(sum(accuracies) / 3, abs=1e-12), (rule["rule"], method)
            assert cell["std"] == pytest.approx(sample_std(accuracies)), (rule["rule"], method)
        # lower_bound ahead under the recorded rule, mle ahead under every other one
        ahead = "lower_bound (add)" if rule["recorded"] else "mle (add)"
        assert by_label[ahead]["rank"] == 1 and sum(c["rank"] == 1 for c in by_label.values()) == 1, rule["rule"]
        assert sum(c["is_reference"] for c in by_label.values()) == 1  # each rule compares with its own reference
        assert all(c["paired"]["n"] == 3 for c in by_label.values() if not c["is_reference"])

    # The recorded rule's table is the sweep's own table, number for number.
    table = client.get(f"/api/sweeps/{sweep['id']}/table").json()
    recorded = next(r for r in rules["rules"] if r["recorded"])
    assert [[c["mean"] for c in row["cells"]] for row in table["rows"]] == \
        [[c["mean"] for c in row["cells"]] for row in recorded["rows"]]

    # The flip is said in words, once per rule that disagrees with the recorded one.
    column = rules["columns"][0]["label"]
    assert rules["ranking_changes"] == [
        f"{column}: {rule} ranks mle (add) > lower_bound (add), where val_accuracy_earliest ranks "
        f"lower_bound (add) > mle (add)." for rule in ("val_accuracy_latest", "val_loss", "last_epoch")]

    # Read back, not retrained: nothing was sent to the workers, and the runs kept their own figures.
    assert len(queued_run_ids(embedded_settings)) == sent
    after = client.get("/api/runs", params={"sweep": sweep["id"], "limit": 100}).json()["items"]
    assert {r["id"]: (r["state"], r["test_accuracy"]) for r in after} == \
        {r["id"]: ("succeeded", pytest.approx(EPOCHS[r["method"]][PICKED["val_accuracy_earliest"][r["method"]] - 1][2]
                                              + 0.01 * r["seed"])) for r in runs}


def test_runs_without_recorded_epochs_are_named_not_counted(embedded_settings, client_for):
    """A run with a final figure but no per-epoch points (as a run trained elsewhere and imported
    would be) cannot be read under another rule: it is left out of every rule's table and named."""
    client = client_for(embedded_settings)
    sweep = client.post("/api/sweeps", json={**GRID, "method": "mle", "seed": [0, 1]}).json()
    first, second = client.get("/api/runs", params={"sweep": sweep["id"], "sort": "id"}).json()["items"]
    train_as_recorded(embedded_settings, first)
    with session_factory(embedded_settings.database_url)() as session:
        as_worker.start_run(session, second["id"], "test")
        recording.finish_run(session, second["id"], cancelled=False, test_accuracy=0.5, val_accuracy=0.5,
                             best_epoch=1, classes=["a", "b"], confusion=[[3, 1], [0, 4]], info={})
    rules = client.get(f"/api/sweeps/{sweep['id']}/selection-rules").json()
    assert rules["runs_without_epochs"] == [second["id"]]
    assert all(rule["rows"][0]["cells"][0]["n"] == 1 for rule in rules["rules"])
    assert client.get(f"/api/sweeps/{sweep['id']}/table").json()["rows"][0]["cells"][0]["n"] == 2
