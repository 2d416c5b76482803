"""Several runs per worker (RUNS_PER_GPU slots), with real processes: two runs train at once on
one worker, each in its own process with its share of the cores, each with exactly the points
it has alone; the workers page and API show both slots busy; the thread budget."""

from __future__ import annotations

import pytest

from backend.db import session_factory
from backend.workers import service as workers_service
from bench.points import assert_exactly_once, run_expected_points
from training.spec import TrainSpec
from training.train import TrainingCallback, train
from worker.slots import thread_budget

from tests.support import wait_for, wait_in_page

SPEC = {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom", "missing_rate": 0.9,
        "epochs": 25, "seed": 0}


class Points(TrainingCallback):
    def __init__(self):
        self.points: dict[tuple[int, str], float] = {}

    def on_epoch_end(self, epoch, metrics):
        self.points.update({(epoch, name): value for name, value in metrics.items()})


def points_alone(spec: dict) -> dict[tuple[int, str], float]:
    recorder = Points()
    train(TrainSpec.model_validate(spec), recorder)
    return recorder.points


def test_thread_budget_shares_the_cores_among_the_slots():
    assert thread_budget(1, cores=16, environ={}) == 16
    assert thread_budget(4, cores=16, environ={}) == 4
    assert thread_budget(3, cores=2, environ={}) == 1  # never below one
    assert thread_budget(2, cores=16, environ={"OMP_NUM_THREADS": "3"}) == 3  # the operator's choice
    assert thread_budget(2, threads_per_run=5, cores=16, environ={"OMP_NUM_THREADS": "3"}) == 5  # THREADS_PER_RUN


@pytest.mark.browser  # the workers page
def test_two_slots_train_two_runs_at_once_each_with_its_exact_points(embedded_settings, client_for, start_worker,
                                                                     start_server, page):
    client = client_for(embedded_settings)
    start_worker(embedded_settings, {"RUNS_PER_GPU": "2"})
    server = start_server(embedded_settings)
    registered = wait_for(lambda: client.get("/api/workers").json(), 30, what="the worker to register")
    assert len(registered) == 1
    worker = registered[0]
    assert len(worker["slots"]) == 2 and worker["gpu"] is None and worker["threads_per_run"] == 1
    assert [s["state"] for s in worker["slots"]] == ["idle", "idle"]

    page.goto(f"{server}/workers")
    wait_in_page(page, "document.querySelectorAll('#workers-table tbody tr').length === 1")

    specs = [SPEC, {**SPEC, "method": "zero_padding", "seed": 1}]
    runs = [client.post("/api/runs", json=spec).json() for spec in specs]

    def both_busy():
        [w] = client.get("/api/workers").json()
        return w["busy"] == 2 and w
    busy = wait_for(both_busy, 120, interval=0.05, what="both slots of the worker to train at once")
    assert sorted(s["run_id"] for s in busy["slots"]) == sorted(r["id"] for r in runs)
    assert len({s["pid"] for s in busy["slots"]}) == 2  # two processes
    # The page shows it live (from the stream), unless the runs have already ended meanwhile.
    wait_in_page(page, "document.querySelector('#workers-table tbody tr').dataset.busy !== '0' || "
                       "document.querySelectorAll('.slot[data-state=idle]').length === 2")

    for run, spec in zip(runs, specs):
        done = wait_for(lambda: (r := client.get(f"/api/runs/{run['id']}").json())["state"] in
                        ("succeeded", "failed") and r, 180, interval=0.2, what=f"run {run['id']} to end")
        assert done["state"] == "succeeded", done["error_detail"]
        points = client.get(f"/api/runs/{run['id']}/metrics").json()["points"]
        assert done["epochs_completed"] == spec["epochs"]
        assert_exactly_once(points, run_expected_points(done))  # every epoch's and logged step's, once
        # The epochs' points bit for bit what the spec gives trained alone (per-step points carry
        # samples/s, a timing).
        got = {(p["epoch"], p["name"]): p["value"] for p in points if not p["name"].startswith("step/")}
        assert got == points_alone(spec)
        system = client.get(f"/api/runs/{run['id']}/system").json()
        names = {m["name"] for m in system["metrics"]}
        assert {"cpu_percent", "rss", "threads"} <= names
        assert not any(n.startswith("gpu_") for n in names)  # no GPU here: absent, not zero
        assert system["latest"]["threads"] == 1
        assert {p["epoch"] for p in system["points"]} == set(range(1, spec["epochs"] + 1))

    def all_idle():
        [w] = client.get("/api/workers").json()
        return w["busy"] == 0 and all(s["state"] == "idle" for s in w["slots"])
    wait_for(all_idle, 30, what="the slots to be idle again")
    queue = client.get("/api/workers/queue").json()
    assert queue == {"depth": 0, "waiting": []}
    assert page.js_errors == []


def test_a_worker_that_stops_leaves_the_list(embedded_settings, client_for, start_worker):
    client = client_for(embedded_settings)
    process = start_worker(embedded_settings)
    wait_for(lambda: len(client.get("/api/workers").json()) == 1, 30, what="the worker to register")
    process.stop()
    assert client.get("/api/workers").json() == []
    with session_factory(embedded_settings.database_url)() as session:
        assert workers_service.live_workers(session, embedded_settings.heartbeat_timeout) == []


def test_a_run_out_of_memory_beside_others_is_requeued_on_a_slot_of_its_own(embedded_settings, client_for,
                                                                            start_worker):
    client = client_for(embedded_settings)
    # The test hook: a run that shares the worker with other slots runs out of memory as it starts.
    start_worker(embedded_settings, {"RUNS_PER_GPU": "2", "MISSMOD_TEST_OUT_OF_MEMORY_WHILE_SHARED": "1"})
    run = client.post("/api/runs", json={**SPEC, "epochs": 3}).json()
    done = wait_for(lambda: (r := client.get(f"/api/runs/{run['id']}").json())["state"] in
                    ("succeeded", "failed") and r, 120, interval=0.2, what="the run to end")
    assert done["state"] == "succeeded", done["error"]  # not failed: queued again, then trained alone
    assert done["needs_own_slot"] is True and done["attempts"] == 2 and done["worker_losses"] == 0
    assert done["error"] is None
    points = client.get(f"/api/runs/{run['id']}/metrics").json()["points"]
    assert_exactly_once(points, run_expected_points(done))

