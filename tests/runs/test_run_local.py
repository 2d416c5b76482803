"""`make run` (backend/run_local.py), as the README tells it: Ctrl-C stops the server and the
worker; a run that was training stops after its current epoch, is queued again, and resumes from
its checkpoint at the next `make run`. Real processes, the embedded default."""

from __future__ import annotations

import signal
import sys

import httpx2 as httpx
import pytest

from backend.db import session_factory
from backend.runs.models import Run, RunState
from backend.settings import Settings
from bench.points import assert_exactly_once, run_expected_points

from tests.runs.test_faults import EPOCHS, FAST
from tests.support import WORKER_TEST_ENV, Process, free_port, settings_env, wait_for

pytestmark = pytest.mark.faults


def make_run(settings: Settings, log) -> Process:
    process = Process([sys.executable, "-m", "backend.run_local"], {**settings_env(settings), **WORKER_TEST_ENV}, log)
    process.wait_for_log("missmod is ready at", timeout=120)
    return process


def ctrl_c(process: Process) -> int:
    """What Ctrl-C does: SIGINT to the launcher's process group, which then stops the server and
    the worker (in process groups of their own) and exits."""
    process.popen.send_signal(signal.SIGINT)
    try:
        return process.popen.wait(60)
    finally:
        process.kill()  # the launcher only: had it not stopped them, its children would be left


def test_ctrl_c_requeues_the_training_run_which_resumes_at_the_next_make_run(tmp_path):
    settings = Settings(var_dir=tmp_path / "var", database_url="", broker_url="", host="127.0.0.1", port=free_port(),
                        heartbeat_interval=0.5, stream_poll_interval=0.1)
    api = httpx.Client(base_url=f"http://127.0.0.1:{settings.port}", timeout=30)

    def run() -> dict:
        return api.get(f"/api/runs/{run_id}").json()

    first = make_run(settings, tmp_path / "first.log")
    try:
        wait_for(lambda: _answers(api), 60, what="the API to answer")
        created = api.post("/api/runs", json={**FAST, "epochs": EPOCHS})
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        wait_for(lambda: run()["epochs_completed"] >= 2, 180, what="two epochs")
    finally:
        stopped_with = ctrl_c(first)
    assert stopped_with == 0, first.log()[-3000:]
    # Stopped after an epoch and queued again: by the worker's warm shutdown, or by the launcher
    # once the worker is gone (each says so).
    with session_factory(settings.database_url)() as session:
        stopped = session.get(Run, run_id)
        assert (stopped.state, stopped.worker) == (RunState.queued, None)
        assert 2 <= stopped.epochs_completed < EPOCHS
    assert ("given back by this worker's shutdown are queued again" in first.log()
            or f"run(s) {run_id} were running and are queued again" in first.log()), first.log()[-3000:]

    second = make_run(settings, tmp_path / "second.log")
    try:
        wait_for(lambda: _answers(api), 60, what="the API to answer again")
        done = wait_for(lambda: (r := run())["state"] in ("succeeded", "failed", "cancelled") and r, 180,
                        what="the run to finish")
        points = api.get(f"/api/runs/{run_id}/metrics").json()["points"]
    finally:
        ctrl_c(second)
        api.close()
    assert done["state"] == "succeeded", done["error_detail"]
    assert done["attempts"] == 2 and done["worker_losses"] == 0  # given back by the shutdown, not lost
    assert done["info"]["resumed_from_epoch"] >= 2  # from its checkpoint, not from epoch 0
    assert_exactly_once(points, run_expected_points(done))


def _answers(api: httpx.Client) -> bool:
    try:
        return api.get("/api/health").status_code == 200
    except httpx.HTTPError:
        return False

