"""Faults, with real processes: a worker killed with SIGKILL mid-run (on the embedded default
and on Redis + PostgreSQL), a worker's pool process killed, a worker stopped with SIGTERM (a
redeploy), Redis restarted, the database unreachable. Each run must still finish `succeeded`
with exactly one point per epoch per metric, resumed from its checkpoint where it was
interrupted. The API restarting under a watching browser is in test_browser.py."""

from __future__ import annotations

import os
import signal
from urllib.parse import urlsplit

import pytest

from backend.migrate import upgrade
from backend.settings import Settings

from tests.support import quick_to_reconcile, wait_for
from tests.support.faults import CuttableProxy, PrivateRedis
from tests.runs.test_end_to_end import SPEC, check_trained_run, wait_for_state

pytestmark = pytest.mark.faults

# About 0.1-0.3 s an epoch on one thread (a wider encoder than the default): long enough to be
# interrupted mid-run, short enough to finish quickly. The tests are about what survives.
FAST = {**SPEC, "missing_rate": 0.5, "hidden_dim": 512}
EPOCHS = 12


def run_json(client, run_id: int) -> dict:
    return client.get(f"/api/runs/{run_id}").json()


def start_long_run(client, epochs: int = EPOCHS, **spec) -> int:
    response = client.post("/api/runs", json={**FAST, "epochs": epochs, **spec})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_for_epochs(client, run_id: int, epochs: int, timeout: float = 180) -> dict:
    run = wait_for(lambda: (r := run_json(client, run_id))["epochs_completed"] >= epochs and r, timeout, interval=0.1,
                   what=f"run {run_id} to complete {epochs} epochs")
    assert run["state"] == "running", run
    return run


def check_resumed(client, run_id: int, *, at_least_epoch: int) -> dict:
    """Finished, every epoch's points exactly once, and continued from a checkpoint, not epoch 0."""
    check_trained_run(client, run_id, EPOCHS)
    run = run_json(client, run_id)
    assert run["info"]["resumed_from_epoch"] >= at_least_epoch, run["info"]
    assert run["attempts"] >= 2
    return run


BACKENDS = ["embedded_settings", pytest.param("service_settings", marks=pytest.mark.services)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_9_of_the_worker_mid_run_then_a_new_worker_finishes_it(backend, request, client_for, start_worker):
    settings = quick_to_reconcile(request.getfixturevalue(backend))
    client = client_for(settings)  # its reconcile step runs in this process
    first = start_worker(settings)
    run_id = start_long_run(client)
    wait_for_epochs(client, run_id, 3)
    os.killpg(first.popen.pid, signal.SIGKILL)  # the worker and its pool process, no warning
    first.popen.wait(10)
    killed_at = run_json(client, run_id)
    assert killed_at["state"] == "running" and killed_at["epochs_completed"] < EPOCHS
    # No worker holds it any more, and the filesystem broker cannot redeliver its id (Redis would
    # only after its visibility timeout, days): the reconcile step must see the heartbeat stop
    # and queue it again, for the next worker (started meanwhile) to resume it.
    start_worker(settings)
    run = check_resumed(client, run_id, at_least_epoch=2)
    assert run["attempts"] == 2 and run["worker_losses"] == 1
    assert run["worker"].rpartition("/")[0] != killed_at["worker"].rpartition("/")[0]


def test_kill_9_of_the_pool_process_resumes_at_once_on_the_same_worker(embedded_settings, client_for, start_worker):
    """The worker's main process survives and hands the id back (reject on worker lost); the
    run's holder is a vanished process of this very node, so it resumes without waiting for
    its heartbeat to go stale (here 10 minutes: the reconcile step cannot be what saved it)."""
    settings = quick_to_reconcile(embedded_settings, heartbeat_timeout=600.0)
    client = client_for(settings)
    start_worker(settings)
    run_id = start_long_run(client)
    run = wait_for_epochs(client, run_id, 3)
    pool_process = int(run["worker"].rpartition("/")[2])
    os.kill(pool_process, signal.SIGKILL)
    wait_for(lambda: run_json(client, run_id)["attempts"] == 2, 60, what="the run restarted by the same worker")
    run = check_resumed(client, run_id, at_least_epoch=2)
    assert run["worker_losses"] == 1 and run["worker"].rpartition("/")[0] == run_json(client, run_id)["worker"].rpartition("/")[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_to_the_worker_checkpoints_and_requeues_its_run(backend, request, client_for, start_worker):
    """`docker compose stop` / a redeploy: SIGTERM to the worker's main process only."""
    settings = quick_to_reconcile(request.getfixturevalue(backend), heartbeat_timeout=600.0)
    client = client_for(settings)
    first = start_worker(settings)
    run_id = start_long_run(client)
    wait_for_epochs(client, run_id, 2)
    os.kill(first.popen.pid, signal.SIGTERM)
    assert first.popen.wait(60) == 0, first.log()[-3000:]  # it did not wait for the 30 epochs, nor crash
    run = run_json(client, run_id)
    assert (run["state"], run["worker"], run["worker_losses"]) == ("queued", None, 0), run
    assert 2 <= run["epochs_completed"] < EPOCHS
    assert "stopped after epoch" in first.log() and "given back by this worker's shutdown" in first.log()
    assert first.log().count(f"train_run[{run_id}] received") == 1  # not taken back by the worker stopping
    start_worker(settings)
    run = check_resumed(client, run_id, at_least_epoch=run["epochs_completed"])
    assert run["attempts"] == 2 and run["worker_losses"] == 0


@pytest.mark.services
def test_redis_restarted_during_a_run(service_settings, tmp_path, client_for, start_worker):
    """Our own Redis (never the machine's shared one), persisting like the compose file's."""
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    try:
        settings = quick_to_reconcile(service_settings, broker_url=redis.url, heartbeat_timeout=600.0)
        client = client_for(settings)
        worker = start_worker(settings)
        running = start_long_run(client, epochs=3 * EPOCHS)
        waiting = start_long_run(client, epochs=3)  # its id sits in Redis through the restart
        wait_for_epochs(client, running, 2)
        redis.restart(down_for=2.0)
        assert run_json(client, running)["state"] == "running"  # the restart happened mid-run
        check_trained_run(client, running, 3 * EPOCHS)
        check_trained_run(client, waiting, 3)
        for run_id in (running, waiting):
            run = run_json(client, run_id)
            assert run["attempts"] == 1 and run["worker_losses"] == 0, run  # never interrupted
        assert worker.popen.poll() is None  # the worker rode out the outage
    finally:
        redis.stop()


@pytest.mark.services
def test_database_unreachable_is_503_and_everything_recovers(postgres_url, tmp_path, client_for, start_worker):
    """PostgreSQL behind a proxy we cut while a run trains: the API answers 503 with a clear
    message (never 500, never a half-written run), the worker waits at its next write (points
    are written every half second), and both carry on when the database is back."""
    upgrade(postgres_url)
    address = urlsplit(postgres_url.replace("postgresql+psycopg", "postgresql"))
    proxy = CuttableProxy((address.hostname, address.port))
    proxy.start()
    through_proxy = postgres_url.replace(address.netloc, f"{address.username}@127.0.0.1:{proxy.port}")
    settings = Settings(var_dir=tmp_path / "var", database_url=through_proxy, broker_url="", heartbeat_interval=0.5, heartbeat_timeout=60.0, reconcile_interval=0.5,
                        stream_poll_interval=0.1)
    settings.make_dirs()
    client = client_for(settings)
    worker = start_worker(settings)
    run_id = start_long_run(client, epochs=2 * EPOCHS)  # still training when the cut comes
    wait_for_epochs(client, run_id, 2)
    queued_before = sorted(os.listdir(settings.broker_dir / "queue"))

    proxy.cut()
    for method, path in [("GET", "/api/runs"), ("GET", f"/api/runs/{run_id}"), ("GET", f"/api/runs/{run_id}/metrics"),
                         ("POST", f"/api/runs/{run_id}/cancel"), ("GET", f"/runs/{run_id}")]:
        response = client.request(method, path)
        assert response.status_code == 503, (path, response.status_code, response.text)
        assert "database is unreachable" in response.json()["detail"] and response.headers["retry-after"]
    created = client.post("/api/runs", json=SPEC)
    assert created.status_code == 503 and "database is unreachable" in created.json()["detail"]
    health = client.get("/api/health")
    assert health.status_code == 503 and health.json()["database"].startswith("unreachable")
    assert sorted(os.listdir(settings.broker_dir / "queue")) == queued_before  # nothing sent for a run not saved
    # The worker meets the cut at a write, and waits there for the database (rather than failing).
    wait_for(lambda: "database unreachable" in worker.log(), 60, what="the worker to wait for the database")
    assert worker.popen.poll() is None and "stopped: the database stayed unreachable" not in worker.log()
    proxy.restore()

    wait_for(lambda: client.get("/api/runs").status_code == 200, 15, what="the API to recover")
    assert client.get("/api/health").status_code == 200
    check_trained_run(client, run_id, 2 * EPOCHS)
    run = run_json(client, run_id)
    assert run["attempts"] == 1 and run["worker_losses"] == 0  # it waited for the database, it was not lost
    assert client.get("/api/runs").json()["total"] == 1  # and the refused create left no row behind
