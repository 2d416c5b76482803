"""Soak: the whole stack under steady load for a while, on loopback only, bounded, stopping by
itself (`make soak`, 10 minutes by default; `--seconds 60` is what the test suite runs).

Real processes: the API (uvicorn) and several Celery workers training short runs continuously
(a submitter keeps their queue full), 50 Server-Sent Events clients each following a live run
to its end, and a poller reading the API the way scripts and pages do. The embedded default
(SQLite + filesystem broker in a temporary VAR_DIR) unless --database-url/--broker-url say
otherwise. It prints, and writes as JSON with --json:

- the resident memory (RSS) of every long-lived process over time and its slope after warm-up
  (MB/min; target < 1: flat); a worker's pool process (a fresh one per run) is shown apart, as
  PSS, since it is replaced after each run;
- beside the API's RSS, its caches' bytes (GET /api/health/memory: each cache, and their sum)
  and the RSS less them, so a cache filling to its bound is told from a leak; --metrics-cache-bytes
  and --series-cache-points bound the caches small (METRICS_CACHE_BYTES, SERIES_CACHE_POINTS);
- errors: failed HTTP calls, 5xx answers, failed runs, broken streams;
- exactness: every succeeded run has exactly the points its spec asks for, once each — every
  epoch's metrics and every logged step's (bench/points.py), none lost, none duplicated, none
  stray — and every stream followed to its end delivered exactly the run's points;
- coverage: how many workers trained runs, how many SSE clients followed at least one run to its
  end, and whether any run was cancelled after it had started (the drain cancels queued ones).

    python -m bench.soak                       # 10 minutes, 3 workers, 50 SSE clients
    python -m bench.soak --seconds 60 --workers 2 --json var/soak.json
    python -m bench.soak --metrics-cache-bytes 1000000 --series-cache-points 50000   # small caches
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import psutil

from bench.points import check_points, expected_points

ROOT = Path(__file__).resolve().parents[1]
RUN_SPEC = {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom", "epochs": 3}
TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Tally:
    """Counts shared by the load threads (each += is under the lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    http_5xx: int = 0
    http_other_errors: int = 0  # 4xx where none is expected
    exceptions: Counter = field(default_factory=Counter)  # connection errors, timeouts, by type
    submitted: list[int] = field(default_factory=list)
    streams_completed: int = 0
    clients_served: int = 0  # SSE clients that followed at least one run to its end
    streams_exact: int = 0
    stream_points_lost: int = 0
    stream_points_duplicated: int = 0
    stream_errors: Counter = field(default_factory=Counter)

    def add(self, **counts) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


class Api:
    def __init__(self, base: str, tally: Tally):
        self.base, self.tally = base, tally
        self.client = httpx.Client(base_url=base, timeout=30)

    def call(self, method: str, path: str, expect=(200,), **kwargs):
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            with self.tally.lock:
                self.tally.requests += 1
                self.tally.exceptions[type(error).__name__] += 1
            return None
        self.tally.add(requests=1)
        if response.status_code >= 500:
            self.tally.add(http_5xx=1)
        elif response.status_code not in expect:
            self.tally.add(http_other_errors=1)
        return response


# --- the load ---------------------------------------------------------------------------


def submitter(api: Api, stop: threading.Event, backlog: int) -> None:
    """Keeps about `backlog` runs queued, so the workers train continuously."""
    seed = 0
    while not stop.is_set():
        page = api.call("GET", "/api/runs", params={"state": "queued", "limit": 1})
        queued = page.json()["total"] if page is not None and page.status_code == 200 else backlog
        for _ in range(max(0, backlog - queued)):
            seed += 1
            created = api.call("POST", "/api/runs", expect=(201,), json={
                **RUN_SPEC, "missing_rate": random.choice([0.3, 0.6, 0.9]), "seed": seed % 1000,
                "name": f"soak {seed}"}, headers={"Idempotency-Key": f"soak-{os.getpid()}-{seed}"})
            if created is not None and created.status_code == 201:
                with api.tally.lock:
                    api.tally.submitted.append(created.json()["id"])
        stop.wait(0.5)


def follow(api: Api, run_id: int, stop: threading.Event) -> bool | None:
    """Read the run's stream to its end; whether it delivered exactly the run's points (None:
    not followed to the end, because the soak stopped)."""
    received: list[tuple[int, str]] = []
    ended = False
    with api.client.stream("GET", f"/api/runs/{run_id}/stream", timeout=httpx.Timeout(30, read=60)) as response:
        api.tally.add(requests=1)
        if response.status_code != 200:
            api.tally.add(**({"http_5xx": 1} if response.status_code >= 500 else {"http_other_errors": 1}))
            return False
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "metrics":
                received += [(p["epoch"], p.get("step"), p["name"]) for p in json.loads(line.split(":", 1)[1])["points"]]
            elif line.startswith("data:") and event in ("end", "gone"):
                ended = event == "end"
                break
            if stop.is_set():
                return None
    if not ended:
        return None
    page = api.call("GET", f"/api/runs/{run_id}/metrics")
    if page is None or page.status_code != 200:
        return False
    stored = Counter((p["epoch"], p.get("step"), p["name"]) for p in page.json()["points"])
    got = Counter(received)
    lost = sum((stored - got).values())
    duplicated = sum((got - stored).values())
    api.tally.add(streams_completed=1, streams_exact=int(lost == duplicated == 0), stream_points_lost=lost,
                  stream_points_duplicated=duplicated)
    return lost == duplicated == 0


def sse_client(api: Api, stop: threading.Event) -> None:
    served = False
    while not stop.is_set():
        with api.tally.lock:
            recent = api.tally.submitted[-10:]
        if not recent:
            stop.wait(0.2)
            continue
        try:
            if follow(api, random.choice(recent), stop) is not None and not served:
                served = True
                api.tally.add(clients_served=1)
        except httpx.HTTPError as error:
            if not stop.is_set():
                with api.tally.lock:
                    api.tally.stream_errors[type(error).__name__] += 1


def poller(api: Api, stop: threading.Event) -> None:
    """A script and the pages reading the API."""
    while not stop.is_set():
        with api.tally.lock:
            ids = api.tally.submitted[-50:]
        api.call("GET", "/api/runs", params={"limit": 50})
        api.call("GET", "/api/runs", params={"state": "succeeded", "sort": "-test_accuracy", "limit": 20})
        if ids:
            run_id = random.choice(ids)
            api.call("GET", f"/api/runs/{run_id}")
            api.call("GET", f"/api/runs/{run_id}/metrics", params={"max_points": 500})
            # As the run page reads them: through the series cache and the running runs' bodies.
            api.call("GET", f"/api/runs/{run_id}/metrics", params={"format": "columns", "max_points": 1000})
            api.call("GET", f"/api/runs/{run_id}/artifacts")
        api.call("GET", "/api/sweeps")
        api.call("GET", "/api/datasets")
        api.call("GET", "/api/health")
        stop.wait(0.2)


# --- processes and memory ---------------------------------------------------------------


def start_processes(env: dict[str, str], port: int, workers: int, log_dir: Path) -> dict[str, subprocess.Popen]:
    processes = {}
    log = open(log_dir / "api.log", "wb")
    processes["api"] = subprocess.Popen(
        # As `make serve` starts it (backend/serve.py: its settings, its allocator's arenas).
        [sys.executable, "-m", "backend.serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
         "--timeout-graceful-shutdown", "2"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for n in range(1, workers + 1):
        log = open(log_dir / f"worker-{n}.log", "wb")
        processes[f"worker-{n}"] = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel", "WARNING",
             "--concurrency", "1", "--hostname", f"soak-{n}-{os.getpid()}@%h", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return processes


def wait_until_up(base: str, processes: dict[str, subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} at start")
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the API did not answer")


def memory_mb(pid: int, children: bool = False) -> float:
    """Resident memory: of the process alone (RSS), or of its child processes (a worker's pool
    process, a fresh one per run) counted proportionally (PSS), since a forked child shares most
    of its pages with its parent and summing RSS would count them twice."""
    try:
        process = psutil.Process(pid)
        if not children:
            return process.memory_info().rss / 2**20
        total = 0
        for child in process.children(recursive=True):
            try:
                total += child.memory_full_info().pss
            except psutil.Error:
                pass
        return total / 2**20
    except psutil.Error:
        return float("nan")


def api_caches(base: str) -> dict[str, int] | None:
    """Bytes of each of the API's caches now, and their sum (`total`); None when it does not say."""
    try:
        answer = httpx.get(f"{base}/api/health/memory", timeout=10)
        if answer.status_code != 200:
            return None
        body = answer.json()
    except (httpx.HTTPError, ValueError):
        return None
    return {**{name: cache["bytes"] for name, cache in body["caches"].items()}, "total": body["cached_bytes"]}


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB), in MB per minute."""
    points = [(t, m) for t, m in samples if m == m]
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_m = sum(m for _, m in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    return 60 * sum((t - mean_t) * (m - mean_m) for t, m in points) / var


def stop_processes(processes: dict[str, subprocess.Popen]) -> None:
    for process in processes.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes.values():
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


# --- the soak ---------------------------------------------------------------------------


def check_runs(api: Api, run_ids: list[int]) -> dict:
    """Every run's final state, whether each succeeded one has exactly its points, which workers
    trained them, and the runs cancelled after they had started."""
    states: Counter = Counter()
    inexact: list[int] = []
    workers: set[str] = set()
    cancelled_after_start: list[int] = []
    for run_id in run_ids:
        run = api.call("GET", f"/api/runs/{run_id}")
        if run is None or run.status_code != 200:
            states["unreadable"] += 1
            continue
        run = run.json()
        states[run["state"]] += 1
        if run["state"] == "cancelled" and run["started_at"] is not None:
            cancelled_after_start.append(run_id)
        if run["state"] != "succeeded":
            continue
        workers.add(run["worker"].rpartition("/")[0])  # the node, whichever pool process it used
        points = api.call("GET", f"/api/runs/{run_id}/metrics").json()["points"]
        # Every point the spec asks for (each epoch's metrics, each logged step's), each once,
        # nothing else: a check of repeats alone could not fail (it is the table's own key).
        wanted = expected_points(run["spec"], run["info"]["steps_per_epoch"], run["spec"]["epochs"])
        if run["epochs_completed"] != run["spec"]["epochs"] or not check_points(points, wanted).exact:
            inexact.append(run_id)
    return {"states": dict(states), "inexact_runs": inexact, "workers_that_trained": len(workers),
            "cancelled_after_start": cancelled_after_start}


def soak(seconds: float, workers: int, sse_clients: int, sample_every: float, database_url: str | None,
         broker_url: str | None, var_dir: Path, drain_seconds: float = 120,
         cache_bounds: dict[str, int] | None = None) -> dict:
    var_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VAR_DIR": str(var_dir), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "HOST": "127.0.0.1", "HEARTBEAT_INTERVAL": "2", "HEARTBEAT_TIMEOUT": "30", "RECONCILE_INTERVAL": "5"}
    for name in ("DATABASE_URL", "BROKER_URL", "ARTIFACT_URL", "ARTIFACT_DIR", "DATA_DIR", "API_TOKEN"):
        env.pop(name, None)
    if database_url:
        env["DATABASE_URL"] = database_url
    if broker_url:
        env["BROKER_URL"] = broker_url
    env.update({name.upper(): str(value) for name, value in (cache_bounds or {}).items()})
    subprocess.run([sys.executable, "-m", "backend.migrate"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    processes = start_processes(env, port, workers, var_dir)
    tally = Tally()
    memory: dict[str, list[tuple[float, float]]] = {name: [] for name in processes}
    pools = [name for name in processes if name.startswith("worker")]
    memory.update({f"{name} pool": [] for name in pools})
    memory["soak driver"] = []
    memory["api less caches"] = []  # its RSS less its caches' bytes: what a leak would grow
    caches: list[tuple[float, dict[str, int]]] = []  # the API's caches' bytes, sampled with its RSS
    try:
        wait_until_up(base, processes)
        stop = threading.Event()
        threads = [threading.Thread(target=submitter, args=(Api(base, tally), stop, 2 * workers), daemon=True),
                   threading.Thread(target=poller, args=(Api(base, tally), stop), daemon=True)]
        threads += [threading.Thread(target=sse_client, args=(Api(base, tally), stop), daemon=True)
                    for _ in range(sse_clients)]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < seconds:
            for name, process in processes.items():
                memory[name].append((elapsed, memory_mb(process.pid)))
            if (cached := api_caches(base)) is not None:
                caches.append((elapsed, cached))
                memory["api less caches"].append((elapsed, memory["api"][-1][1] - cached["total"] / 2**20))
            for name in pools:  # the run in progress (a fresh process per run), PSS
                memory[f"{name} pool"].append((elapsed, memory_mb(processes[name].pid, children=True)))
            memory["soak driver"].append((elapsed, memory_mb(os.getpid())))
            dead = [name for name, process in processes.items() if process.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited during the soak")
            time.sleep(min(sample_every, max(0.0, seconds - elapsed)))
        stop.set()
        for thread in threads:
            thread.join(timeout=70)
        # Drain: the runs in flight and the backlog still queued finish (bounded); what is still
        # queued after that is cancelled.
        api = Api(base, tally)
        deadline = time.monotonic() + drain_seconds
        while time.monotonic() < deadline:
            left = [api.call("GET", "/api/runs", params={"state": state, "limit": 1}) for state in ("queued", "running")]
            if all(page is not None and page.status_code == 200 and page.json()["total"] == 0 for page in left):
                break
            time.sleep(1)
        for run in api.call("GET", "/api/runs", params={"state": "queued", "limit": 500}).json()["items"]:
            api.call("POST", f"/api/runs/{run['id']}/cancel", expect=(200, 409))
        runs = check_runs(api, list(tally.submitted))
        worker_logs = "".join((var_dir / f"worker-{n}.log").read_text(errors="replace")
                              for n in range(1, workers + 1))
    finally:
        stop_processes(processes)

    warm_up = min(120.0, 0.25 * seconds)
    rss = {name: {"first_mb": round(samples[0][1], 1) if samples else None,
                  "last_mb": round(samples[-1][1], 1) if samples else None,
                  "slope_mb_per_min": (None if (s := slope_mb_per_min([p for p in samples if p[0] >= warm_up])) is None
                                       else round(s, 2)),
                  "samples": [(round(t), round(m, 1)) for t, m in samples]}
           for name, samples in memory.items()}
    errors = (tally.http_5xx + tally.http_other_errors + sum(tally.exceptions.values())
              + sum(tally.stream_errors.values()) + runs["states"].get("failed", 0) + runs["states"].get("unreadable", 0))
    cache_names = sorted({name for _, cached in caches for name in cached} - {"total"})
    api_cache_mb = {name: {"first_mb": round(caches[0][1][name] / 2**20, 2), "last_mb": round(caches[-1][1][name] / 2**20, 2),
                           "max_mb": round(max(cached[name] for _, cached in caches) / 2**20, 2)}
                    for name in [*cache_names, "total"]} if caches else {}
    return {
        "seconds": seconds, "workers": workers, "sse_clients": sse_clients, "warm_up_seconds": warm_up,
        "cache_bounds": cache_bounds or {}, "api_caches": api_cache_mb,
        "database": "sqlite" if not database_url else database_url.split(":", 1)[0],
        "broker": "filesystem" if not broker_url else broker_url.split(":", 1)[0],
        "requests": tally.requests, "http_5xx": tally.http_5xx, "http_unexpected_4xx": tally.http_other_errors,
        "request_exceptions": dict(tally.exceptions), "stream_errors": dict(tally.stream_errors),
        "runs_submitted": len(tally.submitted), "run_states": runs["states"], "inexact_runs": runs["inexact_runs"],
        "workers_that_trained": runs["workers_that_trained"], "cancelled_after_start": runs["cancelled_after_start"],
        "clients_served": tally.clients_served, "streams_followed_to_end": tally.streams_completed, "streams_exact": tally.streams_exact,
        "stream_points_lost": tally.stream_points_lost, "stream_points_duplicated": tally.stream_points_duplicated,
        "worker_log_errors": worker_logs.count("ERROR"),
        "errors": (errors + tally.stream_points_lost + tally.stream_points_duplicated + len(runs["inexact_runs"])
                   + len(runs["cancelled_after_start"])),
        "rss": rss,
    }


def report(summary: dict) -> str:
    lines = [f"soak: {summary['seconds']:.0f} s, {summary['workers']} workers, {summary['sse_clients']} SSE clients, "
             f"{summary['database']} + {summary['broker']} broker",
             f"  requests {summary['requests']}, 5xx {summary['http_5xx']}, unexpected 4xx "
             f"{summary['http_unexpected_4xx']}, exceptions {summary['request_exceptions'] or 0}, "
             f"stream errors {summary['stream_errors'] or 0}",
             f"  runs submitted {summary['runs_submitted']}: {summary['run_states']}; inexact points in "
             f"{len(summary['inexact_runs'])}; trained by {summary['workers_that_trained']} workers; cancelled "
             f"after start {len(summary['cancelled_after_start'])}",
             f"  SSE clients served {summary['clients_served']} of {summary['sse_clients']}; streams followed "
             f"to the end {summary['streams_followed_to_end']}, exact "
             f"{summary['streams_exact']}; points lost {summary['stream_points_lost']}, duplicated "
             f"{summary['stream_points_duplicated']}",
             f"  RSS (MB) and slope after {summary['warm_up_seconds']:.0f} s warm-up (target < 1 MB/min):"]
    for name, figures in summary["rss"].items():
        slope = figures["slope_mb_per_min"]
        trace = " ".join(f"{m:.0f}" for _, m in figures["samples"][:: max(1, len(figures["samples"]) // 12)])
        lines.append(f"    {name:<15} {figures['first_mb']!s:>7} → {figures['last_mb']!s:>7}   slope "
                     f"{'n/a' if slope is None else f'{slope:+.2f}'} MB/min   [{trace}]")
    bounds = ", ".join(f"{k.upper()}={v}" for k, v in summary["cache_bounds"].items()) or "default bounds"
    lines.append(f"  the API's caches (MB, first → last, most; {bounds}):")
    for name, figures in summary["api_caches"].items():
        lines.append(f"    {name:<17} {figures['first_mb']:>6} → {figures['last_mb']:>6}   most {figures['max_mb']}")
    lines.append(f"  errors: {summary['errors']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0, help="how long the load lasts (default 10 minutes)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--sse-clients", type=int, default=50)
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary VAR_DIR")
    parser.add_argument("--broker-url", default=None, help="default: the filesystem broker in that VAR_DIR")
    parser.add_argument("--var-dir", type=Path, default=None, help="default: a temporary folder, removed after")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--metrics-cache-bytes", type=int, default=None,
                        help="the API's METRICS_CACHE_BYTES (default: its own, 64 MiB per cache)")
    parser.add_argument("--series-cache-points", type=int, default=None,
                        help="the API's SERIES_CACHE_POINTS (default: its own, 2,000,000)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.workers < 1 or args.sse_clients < 0:
        parser.error("--seconds must be > 0, --workers ≥ 1, --sse-clients ≥ 0")
    with tempfile.TemporaryDirectory(prefix="missmod-soak-") as temporary:
        bounds = {name: value for name, value in (("metrics_cache_bytes", args.metrics_cache_bytes),
                                                   ("series_cache_points", args.series_cache_points))
                  if value is not None}
        summary = soak(args.seconds, args.workers, args.sse_clients, args.sample_every, args.database_url,
                       args.broker_url, args.var_dir or Path(temporary), cache_bounds=bounds)
    print(report(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
