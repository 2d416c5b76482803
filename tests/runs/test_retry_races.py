"""A retry is one conditional transition: of concurrent retries of one run exactly one wins (its
id sent to the broker once), the others get 409 (or the run listed as refused); a retry racing
a delete answers 404 or 409, never 500. A real API process on SQLite with the filesystem broker,
and on PostgreSQL with Redis, where the probe saw 7 to 10 "done" answers for one run, 11 broker
deliveries, and 500 for a retry racing a delete."""

from __future__ import annotations

import json
import threading
from collections import Counter

import httpx2 as httpx
import pytest
from sqlalchemy import event

from tests.support import queued_task_ids

SPEC = {"dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.5, "epochs": 1}
RACERS = 20


@pytest.fixture(params=["embedded_settings", pytest.param("service_settings", marks=pytest.mark.services)])
def settings(request):
    return request.getfixturevalue(request.param)


def deliveries(settings, run_id: int) -> int:
    """How many times the run's id waits in the broker (no worker consumes in these tests)."""
    if settings.uses_filesystem_broker:
        return queued_task_ids(settings).count(str(run_id))
    import redis

    client = redis.Redis.from_url(settings.broker_url)
    try:
        messages = [json.loads(m) for m in client.lrange(settings.task_queue, 0, -1)]
    finally:
        client.close()
    return sum(m["headers"]["id"] == str(run_id) for m in messages)


def at_once(calls) -> list:
    """Each call in a thread of its own, released together; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(index, call):
        barrier.wait()
        results[index] = call()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def cancelled_run(client) -> int:
    run_id = client.post("/api/runs", json=SPEC).json()["id"]
    assert client.post(f"/api/runs/{run_id}/cancel").json()["state"] == "cancelled"
    return run_id


def test_concurrent_retries_of_one_run_have_exactly_one_winner(settings, start_server):
    base = start_server(settings)
    with httpx.Client(base_url=base, timeout=60) as client:
        run_id = cancelled_run(client)
        sent_before = deliveries(settings, run_id)  # its first submission

        def retry(bulk: bool):
            with httpx.Client(base_url=base, timeout=60) as own:
                if bulk:
                    return own.post("/api/runs/bulk-retry", json={"ids": [run_id]})
                return own.post(f"/api/runs/{run_id}/retry")

        responses = at_once([lambda bulk=bool(i % 2): retry(bulk) for i in range(RACERS)])
        single = Counter(r.status_code for r in responses if r.url.path.endswith("/retry"))
        bulk = [r.json() for r in responses if r.url.path.endswith("/bulk-retry")]
        assert all(r.status_code < 500 for r in responses), [r.text for r in responses if r.status_code >= 500]
        winners = single[200] + sum(len(b["done"]) for b in bulk)
        assert winners == 1, (single, bulk)
        assert single[200] + single[409] == RACERS // 2
        assert all(len(b["done"]) + len(b["refused"]) == 1 for b in bulk)
        assert deliveries(settings, run_id) - sent_before == 1  # the queue holds it once more, not 10 times
        assert client.get(f"/api/runs/{run_id}").json()["state"] == "queued"


def test_a_retry_racing_a_delete_is_404_or_409_never_500(settings, start_server):
    base = start_server(settings)
    outcomes = Counter()
    with httpx.Client(base_url=base, timeout=60) as client:
        for _ in range(8):
            run_id = cancelled_run(client)
            with httpx.Client(base_url=base, timeout=60) as retrying, httpx.Client(base_url=base, timeout=60) as deleting:
                retried, deleted = at_once([lambda: retrying.post(f"/api/runs/{run_id}/retry"),
                                            lambda: deleting.delete(f"/api/runs/{run_id}")])
            assert retried.status_code in (200, 404, 409), (retried.status_code, retried.text)
            assert deleted.status_code == 204, (deleted.status_code, deleted.text)
            assert client.get(f"/api/runs/{run_id}").status_code == 404
            outcomes[retried.status_code] += 1
    print("retry racing delete:", dict(outcomes))


def test_a_bulk_retry_of_unknown_ids_is_a_few_queries_not_one_per_id(embedded_settings, client_for):
    client = client_for(embedded_settings)
    run_id = cancelled_run(client)
    engine = client.app.state.sessions.kw["bind"]
    statements = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731  (the SQL text)
    event.listen(engine, "before_cursor_execute", listener)
    try:
        result = client.post("/api/runs/bulk-retry", json={"ids": [run_id, *range(10**6, 10**6 + 9_999)]}).json()
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert result["done"] == [run_id] and len(result["not_found"]) == 9_999 and result["refused"] == []
    assert len(statements) <= 12, statements  # read them, take the run, clear its points, send it
