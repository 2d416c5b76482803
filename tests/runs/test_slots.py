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
from worker.slots import is_out_of_memory, memory_share, thread_budget

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


def test_allocation_failures_of_cublas_and_cudnn_count_as_out_of_memory():
    import torch

    for message in ("CUDA out of memory. Tried to allocate 2.00 GiB",
                    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
                    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
                    "Unable to find a valid cuDNN algorithm to run convolution",
                    "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory"):
        assert is_out_of_memory(RuntimeError(message)), message
    assert is_out_of_memory(torch.OutOfMemoryError("x")) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_out_of_memory(ValueError("out of memory"))  # a value error is the caller's, not the allocator's


def test_a_run_beside_others_may_allocate_its_share_of_the_gpu():
    assert memory_share(1, needs_own_slot=False) == 1.0
    assert memory_share(4, needs_own_slot=True) == 1.0  # it ran out of memory beside others: all of it now
    assert memory_share(2, needs_own_slot=False) == memory_share(4, needs_own_slot=False) * 2 < 0.5


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
    # The fault, injected by the test's own app module: a run given a share of its device runs out
    # of memory as it starts; alone on it, it trains.
    start_worker(embedded_settings, {"RUNS_PER_GPU": "2"}, app="tests.support.out_of_memory_worker")
    run = client.post("/api/runs", json={**SPEC, "epochs": 3}).json()
    done = wait_for(lambda: (r := client.get(f"/api/runs/{run['id']}").json())["state"] in
                    ("succeeded", "failed") and r, 120, interval=0.2, what="the run to end")
    assert done["state"] == "succeeded", done["error"]  # not failed: queued again, then trained alone
    assert done["needs_own_slot"] is True and done["attempts"] == 2 and done["worker_losses"] == 0
    assert done["error"] is None and done["awaiting_broker"] is False  # its id was sent again at once
    points = client.get(f"/api/runs/{run['id']}/metrics").json()["points"]
    assert_exactly_once(points, run_expected_points(done))

