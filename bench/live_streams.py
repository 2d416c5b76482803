"""Concurrent live streams held by one server process, and what they cost the rest of the API.

A real uvicorn process serves the embedded default (SQLite in a temporary VAR_DIR). This
process opens STREAMS Server-Sent Events streams (httpx, asyncio) spread over RUNS runs,
commits an epoch of each run every EPOCH_INTERVAL seconds through the worker's write path
(`recording.record_points`) for SECONDS seconds, and meanwhile times `GET /api/runs` back to
back. The same runs list is timed first with no stream open: the baseline, in the same run.

    python -m bench.live_streams                 # 500 streams over 10 runs, held 20 s
    python -m bench.live_streams --streams 100 --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np

from backend.db import session_factory, utcnow
from backend.migrate import upgrade
from backend.runs import recording
from backend.runs.models import Run, RunState
from backend.settings import Settings

from .api_server import free_port, serve_api
from .rows import Row

STREAMS = 500
RUNS = 10
SECONDS = 20.0
EPOCH_INTERVAL = 0.5
TARGET_P95_MS = 100.0



def _write_epochs(settings: Settings, run_ids: list[int], epochs: int, stop: threading.Event) -> None:
    sessions = session_factory(settings.database_url)
    for epoch in range(1, epochs + 1):
        for run_id in run_ids:
            with sessions() as session:
                recording.record_points(session, run_id, epoch, {"val_accuracy": 0.5, "train_loss": 1.0},
                                        epochs_completed=epoch)
        stop.wait(EPOCH_INTERVAL)
    with sessions() as session:
        for run_id in run_ids:
            recording.finish_run(session, run_id, cancelled=False, test_accuracy=0.5, val_accuracy=0.5,
                               best_epoch=epochs, classes=["0", "1"], confusion=None, info={})


async def _watch(client: httpx.AsyncClient, run_id: int) -> int:
    """Points received by one stream before its `end`; -1 when it was refused or cut."""
    received, event = 0, None
    try:
        async with client.stream("GET", f"/api/runs/{run_id}/stream") as response:
            if response.status_code != 200:
                return -1
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "metrics":
                    received += len(json.loads(line.split(":", 1)[1])["points"])
                elif line.startswith("data:") and event == "end":
                    return received
    except httpx.HTTPError:
        return -1
    return -1


def _time_runs_list(base: str, until: threading.Event | float) -> list[float]:
    """`GET /api/runs` back to back, from a thread of its own (not the loop reading the streams)."""
    times = []
    with httpx.Client(base_url=base, timeout=30) as client:
        while (time.monotonic() < until) if isinstance(until, float) else not until.is_set():
            started = time.perf_counter()
            client.get("/api/runs").raise_for_status()
            times.append(time.perf_counter() - started)
            time.sleep(0.05)
    return times


async def _scenario(base: str, settings: Settings, run_ids: list[int], streams: int, seconds: float):
    limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=streams + 10)
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=httpx.Timeout(300, connect=60)) as sse:
        baseline = await loop.run_in_executor(None, _time_runs_list, base, time.monotonic() + 3.0)
        watchers = [asyncio.create_task(_watch(sse, run_ids[i % len(run_ids)])) for i in range(streams)]
        await asyncio.sleep(2.0)  # the streams connect
        stop, writing = threading.Event(), threading.Event()
        timer = loop.run_in_executor(None, _time_runs_list, base, stop)
        epochs = max(1, round(seconds / EPOCH_INTERVAL))
        _, *received = await asyncio.gather(
            loop.run_in_executor(None, _write_epochs, settings, run_ids, epochs, writing), *watchers)
        stop.set()
        return baseline, await timer, received, epochs


def measure(streams: int = STREAMS, runs: int = RUNS, seconds: float = SECONDS) -> list[Row]:
    with tempfile.TemporaryDirectory() as directory:
        settings = Settings(var_dir=Path(directory), database_url="", broker_url="")
        settings.make_dirs()
        upgrade(settings.database_url)
        sessions = session_factory(settings.database_url)
        run_ids = []
        with sessions() as session:
            for index in range(max(runs, 50)):  # a runs list of 50, `runs` of them streamed
                run = Run(name=f"streamed {index}", spec={"epochs": 1000}, dataset="digits", method="mle",
                          fusion="add", missing_modality="bottom", missing_rate=0.9, seed=index,
                          state=RunState.running, created_at=utcnow(), heartbeat_at=utcnow())
                session.add(run)
                session.flush()
                run_ids.append(run.id)
            session.commit()
        port = free_port()
        server = serve_api(settings, port, {"MAX_STREAMS": str(streams + 10),  # every stream comes from this one address
                                             "MAX_STREAMS_PER_CLIENT": str(streams + 10)})
        try:
            baseline, loaded, received, epochs = asyncio.run(
                _scenario(f"http://127.0.0.1:{port}", settings, run_ids[:runs], streams, seconds))
        finally:
            server.terminate()
            server.wait(10)
    expected = 2 * epochs
    complete = sum(1 for count in received if count == expected)
    base_p95 = float(np.percentile(baseline, 95)) * 1000
    p50, p95 = (float(v) * 1000 for v in np.percentile(loaded, [50, 95]))
    held = f"{streams} streams over {runs} runs, {expected} points each, held {seconds:g} s"
    return [
        Row("live streams held by one server process, every point received", float(complete), "streams",
            target=f">= {STREAMS}", met=complete == streams >= STREAMS,
            note=f"{held}; {streams - complete} streams incomplete or refused"),
        Row("runs list p50 while they are held", p50, "ms", note=f"{len(loaded)} requests"),
        Row.compared("runs list p95 while they are held (baseline: no stream)", p95, base_p95, "ms",
                     note=f"target p95 <= {TARGET_P95_MS:g} ms: {'met' if p95 <= TARGET_P95_MS else 'NOT met'}; "
                          f"{len(baseline)} baseline requests"),
    ]


def main() -> None:
    from .rows import print_table

    parser = argparse.ArgumentParser(prog="python -m bench.live_streams", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=STREAMS)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    args = parser.parse_args()
    print_table(measure(args.streams, args.runs, args.seconds))


if __name__ == "__main__":
    main()
