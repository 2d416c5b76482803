"""A study across two hosts (the many-hosts setup of tests/runs/test_hosts.py: PostgreSQL, Redis
and an S3-compatible store shared, a worker per host), one of whose workers is killed with -9
while it trains a trial: the trial is the same run resumed on the other host from its checkpoint,
no trial is lost, none is counted twice, and every arm ends with exactly its budget."""

from __future__ import annotations

import os
import re
import signal
from collections import Counter

import pytest

from tests.runs.test_hosts import host, shared  # noqa: F401  (shared: the fixture)
from tests.support import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.services]

EPOCHS = 8
# About 0.1-0.3 s an epoch on one thread (tests/runs/test_faults.py): a trial lasts long enough to
# be caught mid-run.
STUDY = {"dataset": "digits", "missing_modality": "bottom", "missing_rate": 0.5, "methods": ["mle", "zero_padding"],
         "spec": {"epochs": EPOCHS, "hidden_dim": 512}, "space": {"hidden_dim": None}, "trials": 3,
         "parallel_trials": 2, "final_seeds": 1, "pruner": {"name": "none"}}


def node_of(worker_process) -> str:
    """The worker's Celery node name, as runs record it (`<node>/<pid>`)."""
    return re.search(r"(test-[0-9a-f]{6}@\S+)", worker_process.log()).group(1)


def test_two_hosts_share_a_study_and_a_worker_killed_mid_trial_loses_and_duplicates_no_trial(
        shared, tmp_path, client_for, start_worker):  # noqa: F811
    host_a, host_b = host(shared, tmp_path / "a"), host(shared, tmp_path / "b")
    api = client_for(host_a)  # its reconcile step (every 0.5 s) runs in this process
    worker_a, worker_b = start_worker(host_a), start_worker(host_b)
    node_a, node_b = node_of(worker_a), node_of(worker_b)
    created = api.post("/api/studies", json=STUDY)
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]

    def runs_of_trials() -> list[dict]:
        trials = api.get(f"/api/studies/{study_id}/trials").json()
        return [api.get(f"/api/runs/{t['run_id']}").json() for t in trials]

    def host_a_mid_trial_after_one_done():
        runs = runs_of_trials()
        on_a = [r for r in runs if (r["worker"] or "").startswith(node_a + "/")]
        done = any(r["state"] == "succeeded" for r in on_a)
        # two epochs done: the first one's checkpoint is surely written (the second's points come after it)
        busy = [r for r in on_a if r["state"] == "running" and 2 <= r["epochs_completed"] < EPOCHS - 2]
        return busy[0] if done and busy else None

    victim = wait_for(host_a_mid_trial_after_one_done, 300, interval=0.1, what="host A mid-trial after finishing one")
    os.killpg(worker_a.popen.pid, signal.SIGKILL)
    worker_a.popen.wait(10)

    def finished():
        study = api.get(f"/api/studies/{study_id}").json()
        return study if study["state"] in ("finished", "cancelled") else None

    study = wait_for(finished, 600, interval=0.5, what="the study to finish")
    assert study["state"] == "finished"
    assert study["trials"] == {"running": 0, "complete": 6, "pruned": 0, "failed": 0, "total": 6, "budget": 6}

    trials = api.get(f"/api/studies/{study_id}/trials").json()
    assert Counter(t["arm"] for t in trials) == {0: 3, 1: 3}
    assert sorted((t["arm"], t["number"]) for t in trials) == [(a, n) for a in (0, 1) for n in range(3)]
    assert len({t["run_id"] for t in trials}) == 6
    runs = {r["id"]: r for r in runs_of_trials()}
    resumed = runs[victim["id"]]  # the same run, still the same trial, resumed from its checkpoint on host B
    assert victim["id"] in {t["run_id"] for t in trials}
    assert (resumed["state"], resumed["attempts"], resumed["worker_losses"]) == ("succeeded", 2, 1)
    assert resumed["info"]["resumed_from_epoch"] >= 1 and resumed["worker"].startswith(node_b + "/")
    assert {r["worker"].rpartition("/")[0] for r in runs.values()} == {node_a, node_b}  # both hosts trained trials
    for run in runs.values():
        points = api.get(f"/api/runs/{run['id']}/metrics").json()["points"]
        keys = [(p["epoch"], p["step"], p["name"]) for p in points]
        assert len(keys) == len(set(keys)) and {e for e, _, _ in keys if e} == set(range(1, EPOCHS + 1))
        trial = next(t for t in trials if t["run_id"] == run["id"])
        # each epoch reported to the study once, with the value the run recorded (a replayed epoch too)
        assert {int(k): v for k, v in trial["intermediate"].items()} == \
            {p["epoch"]: p["value"] for p in points if p["name"] == "val_accuracy"}
    # Nothing more was created than the six trials and the two final runs (each arm's best, one seed).
    assert api.get("/api/runs").json()["total"] == 6 + 2
    final = api.get(f"/api/studies/{study_id}/table").json()
    assert [row["cells"][0]["n"] for row in final["rows"]] == [1, 1]
