"""Many live streams against one real server process: they hold no database connection while
they wait, so the rest of the API keeps answering, and every stream still gets every point.
Above the caps a new stream is refused with 503 and Retry-After. How fast the API answers
meanwhile is a benchmark's to measure (bench/live_streams.py), not a test's."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx2 as httpx
import pytest

from backend.db import session_factory
from backend.runs import recording
from tests.support import as_worker

VALID = {"dataset": "digits", "method": "mle", "missing_modality": "bottom", "missing_rate": 0.5, "epochs": 40}
STREAMS = 200
EPOCHS = 40
METRICS = ("train_loss", "val_loss", "val_accuracy", "test_accuracy")
HELD_SECONDS = 8.0


def write_epochs(settings, run_id: int, epochs: int, seconds: float, done: threading.Event) -> None:
    """What a worker writes, with the worker's own service functions: an epoch's points at a
    time, spread over `seconds`, then the final state."""
    sessions = session_factory(settings.database_url)
    for epoch in range(1, epochs + 1):
        with sessions() as session:
            as_worker.record_epoch(session, run_id, epoch, {name: epoch / 100 for name in METRICS})
        done.wait(seconds / epochs)
    with sessions() as session:
        recording.finish_run(session, run_id, cancelled=False, test_accuracy=0.5, val_accuracy=0.5, best_epoch=epochs,
                           classes=["0", "1"], confusion=[[1, 0], [0, 1]], info={})


def run_async(coroutine):
    """asyncio.run in a thread of its own: Playwright's browser fixture (session-scoped) keeps an
    event loop running in the main thread once a browser test has run."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def watch(client: httpx.AsyncClient, path: str) -> dict:
    """Reads one stream to its end: the points it got and its last event."""
    points, last, event = [], None, None
    async with client.stream("GET", path) as response:
        assert response.status_code == 200, response.status_code
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "metrics":
                points += json.loads(line.split(":", 1)[1])["points"]
            elif line == "" and event:
                last, event = event, None
                if last == "end":
                    break
    return {"points": points, "last": last}


def probe(base: str, stop: threading.Event, writing: threading.Event, answers: list[tuple[str, float, int, bool]]) -> None:
    """The API's answers while the streams are held (and whether the epochs were still being
    written then): from a thread of its own, so that reading 200 streams on the event loop does
    not delay reading these answers. Their times are printed, not judged."""
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.is_set():
            for path in ("/api/health", "/api/runs"):
                held = writing.is_set()
                started = time.perf_counter()
                response = client.get(path)
                answers.append((path, time.perf_counter() - started, response.status_code, held))
            stop.wait(0.5)


@pytest.mark.timeout(300)
def test_two_hundred_streams_leave_the_api_responsive_and_each_gets_every_point(embedded_settings, start_server):
    settings = embedded_settings.model_copy(update={"max_streams_per_client": 1000})
    base = start_server(settings)
    run_id = httpx.post(f"{base}/api/runs", json=VALID, timeout=60).json()["id"]

    async def scenario():
        limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=STREAMS + 10)
        timeout = httpx.Timeout(120, connect=30)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as streams:
            watchers = [asyncio.create_task(watch(streams, f"/api/runs/{run_id}/stream")) for _ in range(STREAMS)]
            finished = threading.Event()
            writing.set()
            writer = asyncio.get_running_loop().run_in_executor(
                None, write_epochs, settings, run_id, EPOCHS, HELD_SECONDS, finished)
            # together: a writer that fails ends the test instead of leaving the streams waiting
            _, *results = await asyncio.gather(writer, *watchers)
            return results

    stop, writing, answers = threading.Event(), threading.Event(), []
    prober = threading.Thread(target=probe, args=(base, stop, writing, answers), daemon=True)
    prober.start()
    try:
        results = run_async(scenario())
    finally:
        stop.set()
        prober.join(30)
    expected = {(epoch, name) for epoch in range(1, EPOCHS + 1) for name in METRICS}
    for result in results:
        assert result["last"] == "end"
        got = [(p["epoch"], p["name"]) for p in result["points"]]
        assert len(got) == len(expected) and set(got) == expected  # every point, once
    # The API answered while the streams were held and their run was being written, every time.
    assert any(held for *_, held in answers), answers
    assert all(status == 200 for _, _, status, _ in answers), answers
    seconds = sorted(seconds for _, seconds, _, _ in answers)
    print(f"{STREAMS} streams held {HELD_SECONDS:g} s: {len(answers)} answers, median {seconds[len(seconds) // 2] * 1000:.0f}"
          f" ms, slowest {seconds[-1] * 1000:.0f} ms (measured and compared in bench/live_streams.py)")
    assert "QueuePool limit" not in base.process.log()


def test_total_cap_answers_503(embedded_settings, start_server):
    """The total cap counts every kind of stream together (each kind's own caps:
    tests/app/test_live_hub.py)."""
    settings = embedded_settings.model_copy(update={"max_streams_per_client": 100, "max_streams": 2})
    base = start_server(settings)
    run_id = httpx.post(f"{base}/api/runs", json=VALID, timeout=60).json()["id"]
    sweep_id = httpx.post(f"{base}/api/sweeps", json={**VALID, "seed": [0, 1]}, timeout=60).json()["id"]

    async def scenario():
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            held = [await client.send(client.build_request("GET", f"/api/runs/{run_id}/stream"), stream=True),
                    await client.send(client.build_request("GET", f"/api/sweeps/{sweep_id}/stream"), stream=True)]
            assert [r.status_code for r in held] == [200, 200]
            for path in (f"/api/runs/{run_id}/stream", f"/api/sweeps/{sweep_id}/stream"):
                refused = await client.get(path)
                assert refused.status_code == 503 and "retry-after" in refused.headers
                assert "this server holds its maximum of 2" in refused.json()["detail"]
            for response in held:
                await response.aclose()

    run_async(scenario())


async def read_sweep_stream(client: httpx.AsyncClient, path: str, first_events: asyncio.Event | None = None) -> dict:
    """A sweep stream's events to its `end`: the runs it was told of (full lists and changes)."""
    runs, seen, event = {}, [], None
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
                seen.append(event)
            elif line.startswith("data:") and event == "runs":
                body = json.loads(line.split(":", 1)[1])
                if body["full"]:
                    runs.clear()
                runs.update({run["id"]: run["state"] for run in body["runs"]})
            elif line == "" and first_events is not None and "progress" in seen:
                first_events.set()
            if event == "end" and line == "":
                break
    return {"runs": runs, "events": seen}


def test_clients_joining_a_sweep_stream_late_get_its_whole_state(embedded_settings, start_server):
    """One poller serves every client of a sweep: one that joins after the first polls still
    starts from the full list of runs, then follows the changes to the end."""
    base = start_server(embedded_settings)
    sweep = httpx.post(f"{base}/api/sweeps", json={**VALID, "epochs": 1, "seed": [0, 1, 2]}, timeout=60).json()
    run_ids = sorted(run["id"] for run in httpx.get(f"{base}/api/runs", params={"sweep": sweep["id"]}).json()["items"])
    sessions = session_factory(embedded_settings.database_url)

    def finish(run_id):
        with sessions() as session:
            as_worker.record_epoch(session, run_id, 1, {"val_accuracy": 0.5})
            recording.finish_run(session, run_id, cancelled=False, test_accuracy=0.5, val_accuracy=0.5, best_epoch=1,
                               classes=["0", "1"], confusion=None, info={})

    async def scenario():
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            path = f"/api/sweeps/{sweep['id']}/stream"
            first_ready = asyncio.Event()
            first = asyncio.create_task(read_sweep_stream(client, path, first_ready))
            await asyncio.wait_for(first_ready.wait(), 30)
            await asyncio.to_thread(finish, run_ids[0])
            late_ready = asyncio.Event()
            late = asyncio.create_task(read_sweep_stream(client, path, late_ready))
            await asyncio.wait_for(late_ready.wait(), 30)
            for run_id in run_ids[1:]:
                await asyncio.to_thread(finish, run_id)
            return await first, await late

    first, late = run_async(scenario())
    for stream in (first, late):
        assert stream["runs"] == {run_id: "succeeded" for run_id in run_ids}
        assert stream["events"][0] == "runs" and stream["events"][-1] == "end" and "summary" in stream["events"]
