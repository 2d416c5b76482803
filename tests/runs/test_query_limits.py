"""What a query of the API may cost on PostgreSQL (issue 20, item 2): a final-metric filter is
linear in the points (it was quadratic: six runs of 16,000 points took two minutes), no query runs
longer than STATEMENT_TIMEOUT (503, its connection freed), and an external run's points are
written as the worker writes them, in one statement, not one ORM object each. A real API process
and a real PostgreSQL."""

from __future__ import annotations

import json
import threading
import time

import httpx2 as httpx
import pytest
from sqlalchemy import create_engine, event, text

from ..support import wait_for

pytestmark = pytest.mark.services

POINTS = 16_000


def external(name: str, final: float, points: int = POINTS) -> dict:
    """An external run whose metric `m` rises to `final` at its last epoch."""
    return {"dataset": "digits", "method": "theirs", "missing_modality": "bottom", "missing_rate": 0.5,
            "name": name, "test_accuracy": 0.5,
            "metrics": [{"epoch": epoch, "name": "m", "value": final * epoch / (points - 1)}
                        for epoch in range(points)]}


def test_a_final_metric_filter_is_linear_in_the_points(service_settings, start_server):
    """Under a 20 s statement timeout the quadratic filter was stopped (503); now it answers,
    and answers right: the value at each run's last epoch, not any epoch's."""
    base = start_server(service_settings.model_copy(update={"statement_timeout": 20.0}))
    with httpx.Client(base_url=base, timeout=120) as client:
        ids = {}
        for name, final in (("low", 0.2), ("high", 0.9)):
            response = client.post("/api/runs/external", content=json.dumps(external(name, final)).encode(),
                                   headers={"content-type": "application/json"})
            assert response.status_code == 201, response.text
            ids[name] = response.json()["id"]
        for where, expected in (("metrics.m>0", ["high", "low"]), ("metrics.m>0.5", ["high"]),
                                ("metrics.m<0.5", ["low"]), ("metrics.m>0.95", []), ("metrics.other>0", [])):
            response = client.get("/api/runs", params={"where": where})
            assert response.status_code == 200, (where, response.status_code, response.text)
            assert [run["id"] for run in response.json()["items"]] == [ids[name] for name in expected], where


def test_a_slow_query_is_stopped_by_the_statement_timeout(service_settings, start_server):
    """A query held up (here by a lock another session holds on the runs table: the same as a
    slow plan, to the database) is stopped after STATEMENT_TIMEOUT and answered 503 with
    Retry-After, and it leaves no statement of the API running in the database."""
    base = start_server(service_settings.model_copy(update={"statement_timeout": 1.0}))
    admin = create_engine(service_settings.database_url)
    with httpx.Client(base_url=base, timeout=60) as client:
        assert client.post("/api/runs/external", json=external("one", 0.5, points=3)).status_code == 201
        with admin.connect() as locker:
            locker.execute(text("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE"))
            answers = []
            thread = threading.Thread(target=lambda: answers.append(client.get("/api/runs")))
            thread.start()
            thread.join(30)  # the lock is held far longer than the timeout: only the timeout ends it
            assert answers, "the request waited for the lock: no statement timeout"
            response = answers[0]
            assert response.status_code == 503, response.text
            assert "STATEMENT_TIMEOUT" in response.json()["detail"] and response.headers["retry-after"] == "5"
            # Nothing of the API's still runs (or waits) in the database: its reconcile pass, which
            # may start meanwhile, is stopped the same way.
            wait_for(lambda: locker.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state = 'active'")).scalar() == 0, timeout=10,
                what="no statement of the API left running")
            locker.rollback()
        assert client.get("/api/runs").json()["total"] == 1
    admin.dispose()


@pytest.mark.parametrize("backend", ["embedded_settings", "service_settings"])
def test_an_external_runs_points_are_written_in_one_statement(backend, request, client_for):
    settings = request.getfixturevalue(backend)
    client = client_for(settings)
    engine = client.app.state.sessions.kw["bind"]
    writes = []

    def count(connection, cursor, statement, parameters, context, executemany):
        if "metric_points" in statement and statement.lstrip().upper().startswith("INSERT"):
            writes.append(time.monotonic())

    event.listen(engine, "before_cursor_execute", count)
    try:
        response = client.post("/api/runs/external", json=external("batched", 0.7))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert response.status_code == 201, response.text
    assert len(writes) == 1, len(writes)
    points = client.get(f"/api/runs/{response.json()['id']}/metrics", params={"format": "columns"}).json()
    assert points["total"] == POINTS and points["series"]["m"]["value"][-1] == pytest.approx(0.7)
