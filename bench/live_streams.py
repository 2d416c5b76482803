"""Concurrent live streams of every kind held by one server process, and what they cost the
rest of the API.

A real uvicorn process serves the embedded default (SQLite in a temporary VAR_DIR). This
process opens, from ADDRESSES loopback addresses (127.0.0.2, 127.0.0.3, …: within the
per-client cap, MAX_STREAMS_PER_CLIENT=50, as many browsers would), STREAMS streams of each
kind: runs (over RUNS running runs), sweeps (over SWEEPS sweeps of SWEEP_RUNS runs) and the
workers (two registered workers). Every EPOCH_INTERVAL seconds for SECONDS seconds it commits
an epoch of every streamed run and of one run of each sweep through the worker's write path
(`recording.record_points`) and moves a worker's slot; then it finishes the runs, so the run
and sweep streams end. Meanwhile `GET /api/runs` is timed back to back from 127.0.0.1; the
same list is timed first with no stream open: the baseline, in the same run.

    python -m bench.live_streams                          # 500 of each kind, held 20 s
    python -m bench.live_streams --streams 100 --seconds 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx2 as httpx
import numpy as np

from backend.db import session_factory, utcnow
from backend.migrate import upgrade
from backend.runs import recording
from backend.runs.models import Run, RunState
from backend.settings import Settings
from backend.sweeps.models import Sweep
from backend.workers import service as workers

from .api_server import free_port, serve_api
from .rows import Row

STREAMS = 500  # of each kind
KINDS = ("run", "sweep", "workers")
RUNS = 10
SWEEPS = 10
SWEEP_RUNS = 5
SECONDS = 20.0
EPOCH_INTERVAL = 0.5
PER_CLIENT = 50  # the default MAX_STREAMS_PER_CLIENT, kept
TARGET_P95_MS = 100.0


def _running_run(name: str, seed: int, sweep_id: int | None = None) -> Run:
    return Run(name=name, spec={"epochs": 1000}, dataset="digits", method="mle", fusion="add",
               missing_modality="bottom", missing_rate=0.9, seed=seed, state=RunState.running,
               created_at=utcnow(), heartbeat_at=utcnow(), sweep_id=sweep_id)


def _populate(settings: Settings, runs: int, sweeps: int) -> tuple[list[int], dict[int, list[int]]]:
    """A runs list of 50 (plus the sweeps' runs), `runs` of them streamed; `sweeps` sweeps; two workers."""
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        run_ids = []
        for index in range(max(runs, 50)):
            run = _running_run(f"streamed {index}", index)
            session.add(run)
            session.flush()
            run_ids.append(run.id)
        sweep_runs = {}
        for index in range(sweeps):
            sweep = Sweep(name=f"streamed sweep {index}", created_at=utcnow(),
                          grid={"dataset": ["digits"], "seed": list(range(SWEEP_RUNS))})
            session.add(sweep)
            session.flush()
            members = [_running_run(f"sweep {index} seed {seed}", seed, sweep.id) for seed in range(SWEEP_RUNS)]
            session.add_all(members)
            session.flush()
            sweep_runs[sweep.id] = [run.id for run in members]
        session.commit()
    with sessions() as session:
        for name in ("bench-worker-1", "bench-worker-2"):
            workers.register_worker(session, workers.WorkerIdentity(name=name, host="bench", pid=os.getpid(), slots=2,
                                                                    threads_per_run=1))
    return run_ids[:runs], sweep_runs


def _write_epochs(settings: Settings, run_ids: list[int], sweep_runs: dict[int, list[int]], epochs: int,
                  stop: threading.Event) -> None:
    """An epoch of every streamed run, of one run of each sweep (in turn), and a slot's move, each
    EPOCH_INTERVAL; then every run finishes."""
    sessions = session_factory(settings.database_url)
    for epoch in range(1, epochs + 1):
        moved = run_ids + [members[epoch % len(members)] for members in sweep_runs.values()]
        for run_id in moved:
            with sessions() as session:
                recording.record_points(session, run_id, epoch, {"val_accuracy": 0.5, "train_loss": 1.0},
                                        epochs_completed=epoch)
        with sessions() as session:  # the workers' snapshot moves too
            workers.set_slot(session, "bench-worker-1", epoch % 2, "training" if epoch % 3 else "idle")
        stop.wait(EPOCH_INTERVAL)
    with sessions() as session:
        for run_id in run_ids + [run_id for members in sweep_runs.values() for run_id in members]:
            recording.finish_run(session, run_id, cancelled=False, test_accuracy=0.5, val_accuracy=0.5,
                                 best_epoch=epochs, classes=["0", "1"], confusion=None, info={})


async def _watch(client: httpx.AsyncClient, path: str, stop: asyncio.Event) -> tuple[int, int, bool]:
    """(points received, events received, ended) of one stream: read to its `end`, or, for the
    workers' stream (which never ends), until `stop`. (-1, 0, False) when refused or cut."""
    points = events = 0
    event = None
    try:
        async with client.stream("GET", path) as response:
            if response.status_code != 200:
                return -1, 0, False
            lines = response.aiter_lines()
            while True:
                reading = asyncio.ensure_future(anext(lines))
                stopping = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if reading not in done:
                    reading.cancel()
                    return points, events, False
                stopping.cancel()
                line = reading.result()
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                    events += 1
                elif line.startswith("data:") and event == "metrics":
                    points += len(json.loads(line.split(":", 1)[1])["points"])
                elif line.startswith("data:") and event == "end":
                    return points, events, True
    except (httpx.HTTPError, StopAsyncIteration):
        return -1, events, False


def _time_runs_list(base: str, until: threading.Event | float) -> list[tuple[float, float]]:
    """`GET /api/runs` back to back, from a thread of its own (not the loop reading the streams):
    (when it started, on the monotonic clock; seconds it took)."""
    times = []
    with httpx.Client(base_url=base, timeout=30) as client:
        while (time.monotonic() < until) if isinstance(until, float) else not until.is_set():
            at, started = time.monotonic(), time.perf_counter()
            client.get("/api/runs").raise_for_status()
            times.append((at, time.perf_counter() - started))
            time.sleep(0.05)
    return times


async def _scenario(base: str, settings: Settings, run_ids: list[int], sweep_runs: dict[int, list[int]],
                    streams: int, seconds: float):
    paths = {"run": [f"/api/runs/{run_ids[i % len(run_ids)]}/stream" for i in range(streams)],
             "sweep": [f"/api/sweeps/{list(sweep_runs)[i % len(sweep_runs)]}/stream" for i in range(streams)],
             "workers": ["/api/workers/stream"] * streams}
    opened = [(kind, path) for kind in KINDS for path in paths[kind]]
    addresses = [f"127.0.0.{2 + i}" for i in range(-(-len(opened) // (PER_CLIENT - 2)))]
    loop = asyncio.get_running_loop()
    clients = [httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(300, connect=60),
                                 limits=httpx.Limits(max_connections=PER_CLIENT, max_keepalive_connections=PER_CLIENT),
                                 transport=httpx.AsyncHTTPTransport(local_address=address))
               for address in addresses]
    try:
        baseline = await loop.run_in_executor(None, _time_runs_list, base, time.monotonic() + 3.0)
        stop_workers = asyncio.Event()
        watchers = [asyncio.create_task(_watch(clients[i % len(clients)], path, stop_workers))
                    for i, (_, path) in enumerate(opened)]
        await asyncio.sleep(3.0)  # the streams connect
        stop, writing = threading.Event(), threading.Event()
        timer = loop.run_in_executor(None, _time_runs_list, base, stop)
        epochs = max(1, round(seconds / EPOCH_INTERVAL))
        await loop.run_in_executor(None, _write_epochs, settings, run_ids, sweep_runs, epochs, writing)
        finishing = time.monotonic()  # the runs finish: the run and sweep streams end
        ending = [watcher for watcher, (kind, _) in zip(watchers, opened) if kind != "workers"]
        await asyncio.gather(*ending)
        stop.set()
        loaded = await timer
        stop_workers.set()
        results = await asyncio.gather(*watchers)
    finally:
        for client in clients:
            await client.aclose()
    held = [seconds for at, seconds in loaded if at < finishing]
    ending = [seconds for at, seconds in loaded if at >= finishing]
    return ([seconds for _, seconds in baseline], held, ending, list(zip((kind for kind, _ in opened), results)), epochs,
            len(addresses))


def measure(streams: int = STREAMS, runs: int = RUNS, sweeps: int = SWEEPS, seconds: float = SECONDS) -> list[Row]:
    with tempfile.TemporaryDirectory() as directory:
        settings = Settings(var_dir=Path(directory), database_url="", broker_url="")
        settings.make_dirs()
        upgrade(settings.database_url)
        run_ids, sweep_runs = _populate(settings, runs, sweeps)
        port = free_port()
        # The total cap fits every stream; the per-client cap stays the default: the streams come
        # from enough addresses.
        server = serve_api(settings, port, {"MAX_STREAMS": str(len(KINDS) * streams + 10),
                                             "MAX_STREAMS_PER_CLIENT": str(PER_CLIENT)})
        try:
            baseline, loaded, ending, results, epochs, addresses = asyncio.run(
                _scenario(f"http://127.0.0.1:{port}", settings, run_ids, sweep_runs, streams, seconds))
        finally:
            server.terminate()
            server.wait(10)
    load = os.getloadavg()
    expected = 2 * epochs
    complete = Counter()
    for kind, (points, events, ended) in results:
        complete[kind] += {"run": ended and points == expected, "sweep": ended,
                           "workers": points == 0 and events > 0 and not ended}[kind]
    base_p95 = float(np.percentile(baseline, 95)) * 1000
    p50, p95 = (float(v) * 1000 for v in np.percentile(loaded, [50, 95]))
    ending_p95 = float(np.percentile(ending, 95)) * 1000 if ending else float("nan")
    held = (f"{streams} run streams over {runs} runs ({expected} points each), {streams} sweep streams over "
            f"{sweeps} sweeps of {SWEEP_RUNS} runs, {streams} workers streams, from {addresses} client addresses "
            f"(<= {PER_CLIENT - 2} each), held {seconds:g} s; load average {load[0]:.1f} / {load[1]:.1f} / "
            f"{load[2]:.1f} (1/5/15 min) after")
    total = len(KINDS) * streams
    return [
        Row("live streams of every kind held by one server process, each served to its end", float(sum(complete.values())),
            "streams", target=f">= {total}", met=sum(complete.values()) == total,
            note=f"{held}; complete: {dict(complete)} (a run's: every point once then `end`; a sweep's: `end`; "
                 "the workers': open with events to the last)"),
        Row("runs list p50 while they are held", p50, "ms",
            note=f"{len(loaded)} requests while every stream was held and epochs landed; then, while the runs "
                 f"finished and {2 * streams:,} run and sweep streams ended, p95 {ending_p95:.0f} ms over {len(ending)} requests"),
        Row.compared("runs list p95 while they are held (baseline: no stream)", p95, base_p95, "ms",
                     note=f"target p95 <= {TARGET_P95_MS:g} ms: {'met' if p95 <= TARGET_P95_MS else 'NOT met'}; "
                          f"{len(baseline)} baseline requests; load average {load[0]:.1f}"),
    ]


def main() -> None:
    from .rows import print_table

    parser = argparse.ArgumentParser(prog="python -m bench.live_streams", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=STREAMS, help="streams of each kind")
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--sweeps", type=int, default=SWEEPS)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    args = parser.parse_args()
    print_table(measure(args.streams, args.runs, args.sweeps, args.seconds))


if __name__ == "__main__":
    main()
