"""The whole path with real processes: API → database → broker → Celery worker process →
training → metric points → API. Once on the embedded default (SQLite + filesystem broker),
once on the production services of this machine (PostgreSQL + Redis)."""

from __future__ import annotations

import numpy as np
import pytest

from backend.db import session_factory
from backend.queue import WorkQueue
from backend.runs.models import Run, RunState
from backend.sweeps.service import run_predictions
from backend.db import utcnow
from bench.points import assert_exactly_once, run_expected_points

from tests.support import wait_for

SPEC = {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom", "missing_rate": 0.9,
        "epochs": 4, "seed": 0}


def wait_for_state(client, run_id: int, states: set[str], timeout: float = 120) -> dict:
    def done():
        run = client.get(f"/api/runs/{run_id}").json()
        return run if run["state"] in states else None

    return wait_for(done, timeout, interval=0.2, what=f"run {run_id} to reach {states}")


def check_trained_run(client, run_id: int, epochs: int) -> None:
    run = wait_for_state(client, run_id, {"succeeded", "failed", "cancelled"})
    assert run["state"] == "succeeded", run["error_detail"] or run
    assert run["test_accuracy"] > 0.5 and 1 <= run["best_epoch"] <= epochs
    assert run["started_at"] and run["finished_at"] and run["heartbeat_at"] and run["worker"]
    assert run["info"]["reference_set"] == "all_complete"
    # The reproducibility record of the process that trained it (training/reproducibility.py).
    environment = run["environment"]
    assert environment["python"] and environment["torch"] and environment["host"] and environment["cpu_count"]
    assert environment["device"] == run["info"]["device"] and environment["torch_threads"] >= 1
    assert (environment["plugin"], environment["missmod_version"]) == ("missmod", environment["plugin_version"])
    everything = client.get(f"/api/runs/{run_id}/metrics").json()["points"]
    # Every epoch's metrics where the epoch ended, and every logged step's, each exactly once:
    # none lost, none repeated (also across a resume).
    assert run["epochs_completed"] == epochs
    assert_exactly_once(everything, run_expected_points(run))
    points = [p for p in everything if not p["name"].startswith("step/")]
    chosen = {p["name"]: p["value"] for p in points if p["epoch"] == run["best_epoch"]}
    assert chosen["test_accuracy"] == run["test_accuracy"]
    confusion = client.get(f"/api/runs/{run_id}/confusion").json()
    assert len(confusion["counts"]) == 10 and confusion["epoch"] == run["best_epoch"]
    assert sum(map(sum, confusion["counts"])) == run["info"]["n_test"]
    # The test predictions kept for paired tests agree with the accuracy and the matrix.
    with client.app.state.sessions() as session:
        kept = run_predictions(session, [run_id])[run_id]
    assert len(kept.labels) == run["info"]["n_test_groups"]
    assert kept.correct.mean() == pytest.approx(run["test_accuracy"], abs=1e-12)
    rebuilt = np.zeros((10, 10), dtype=int)
    np.add.at(rebuilt, (kept.labels, kept.predicted), 1)
    assert rebuilt.tolist() == confusion["counts"]


def test_embedded_default_trains_a_run(embedded_settings, client_for, start_worker):
    client = client_for(embedded_settings)
    assert embedded_settings.database_url.startswith("sqlite") and embedded_settings.uses_filesystem_broker
    start_worker(embedded_settings)
    run = client.post("/api/runs", json=SPEC).json()
    check_trained_run(client, run["id"], SPEC["epochs"])


@pytest.mark.services
def test_redis_and_postgresql_train_a_run(service_settings, client_for, start_worker):
    client = client_for(service_settings)
    assert service_settings.database_url.startswith("postgresql") and service_settings.broker_url.startswith("redis")
    health = client.get("/api/health").json()
    assert health == {**health, "status": "ok", "database_backend": "postgresql", "broker_transport": "redis"}
    start_worker(service_settings)
    first = client.post("/api/runs", json=SPEC).json()
    second = client.post("/api/runs", json={**SPEC, "method": "lower_bound", "fusion": "concat", "epochs": 3}).json()
    check_trained_run(client, first["id"], SPEC["epochs"])
    run = wait_for_state(client, second["id"], {"succeeded", "failed"})
    assert run["state"] == "succeeded" and run["info"]["reference_set"] == "none"


def test_cancel_stops_a_running_run_and_keeps_its_metrics(embedded_settings, client_for, start_worker):
    client = client_for(embedded_settings)
    start_worker(embedded_settings)
    run = client.post("/api/runs", json={**SPEC, "epochs": 2000}).json()
    wait_for(lambda: client.get(f"/api/runs/{run['id']}").json()["epochs_completed"] >= 2, 120,
             what="two epochs")
    assert client.post(f"/api/runs/{run['id']}/cancel").status_code == 200
    final = wait_for_state(client, run["id"], {"cancelled", "succeeded", "failed"}, timeout=60)
    assert final["state"] == "cancelled"
    assert 2 <= final["epochs_completed"] < 2000
    points = client.get(f"/api/runs/{run['id']}/metrics").json()["points"]
    assert len([p for p in points if not p["name"].startswith("step/")]) == 4 * final["epochs_completed"]
    assert client.get(f"/api/runs/{run['id']}/confusion").status_code == 200  # best epoch so far is kept


def test_a_failing_run_ends_failed_with_its_message(embedded_settings, client_for, start_worker):
    """A spec that stopped fitting its dataset after it was queued (here: written directly)."""
    client = client_for(embedded_settings)
    with session_factory(embedded_settings.database_url)() as session:
        run = Run(name="broken", spec={**SPEC, "missing_modality": "left"}, dataset="digits", method="mle",
                  fusion="add", missing_modality="left", missing_rate=0.9, seed=0, state=RunState.queued,
                  created_at=utcnow())
        session.add(run)
        session.commit()
        run_id = run.id
    queue = WorkQueue(embedded_settings)
    queue.send_run(run_id)
    queue.close()
    start_worker(embedded_settings)
    final = wait_for_state(client, run_id, {"failed", "succeeded"})
    assert final["state"] == "failed"
    assert "SpecError" in final["error"] and "no modality 'left'" in final["error"]
    assert "Traceback" in final["error_detail"] and final["finished_at"]
    # the worker goes on serving other runs
    ok = client.post("/api/runs", json={**SPEC, "epochs": 2}).json()
    assert wait_for_state(client, ok["id"], {"succeeded", "failed"})["state"] == "succeeded"
