"""A long run's curves: its metrics served to 4 concurrent clients by one server process, and its
run page drawn in Chromium.

The database (a fresh PostgreSQL database on --postgres, or SQLite with --sqlite) holds two runs
of 100,000 points each (100 epochs × 199 logged steps × 5 per-step series, plus 5 per-epoch
series): one finished, one still running. From this process (the server is another uvicorn
process, as `make run` serves), 4 keep-alive connections ask concurrently for what the run page
asks: the metrics as columns, each series thinned to 1,500 points (min/max per bucket). p95 is
over every request after a warm-up:
- the finished run (served from the server's body cache, its ETag known),
- the same with If-None-Match (what a browser sends on a second visit: 304, no body),
- the running run while a writer adds 25 points every 0.5 s, as a worker does (the server reads
  only the new points, thins all 100,000 once per new batch, and serves that to every client
  until the next one),
and, once, the first read of the running run by a fresh server process (all 100,000 points read).
Then Chromium opens the finished run's page: time from navigation until every chart has drawn
every series (median of 3 loads after a warm one).
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from .rows import Row

CHROMIUM = os.environ.get("MISSMOD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
EPOCHS, LOGGED_STEPS, STEP_EVERY = 100, 199, 10
STEP_METRICS = ("step/train_loss", "step/loss_complete", "step/loss_missing", "step/lr", "step/samples_per_second")
EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "test_accuracy", "test_sample_accuracy")
TARGET_P95_MS = 100.0
TARGET_PAGE_S = 0.5
PAGE_QUERY = "format=columns&max_points=1500"  # what the run page asks (frontend/static/run.js)


def add_long_run(url: str, state: str) -> int:
    """A run of exactly 100,000 points, written through the worker's batch insert."""
    import math

    from sqlalchemy import insert

    from backend.db import session_factory
    from backend.runs.ingest import Point, insert_points
    from backend.runs.models import Run

    from .sweep_views import run_row

    steps_per_epoch = LOGGED_STEPS * STEP_EVERY
    with session_factory(url)() as session:
        row = run_row(1, "mle", "add", "bottom", 0.9, 0, state, 0.93 if state == "succeeded" else None, None, EPOCHS)
        row["info"] = {"steps_per_epoch": steps_per_epoch}
        run_id = session.execute(insert(Run).values(**row)).inserted_primary_key[0]
        for epoch in range(1, EPOCHS + 1):
            points = [Point(epoch, step, name, 1.0 / step + 0.05 * math.sin(step / 37.0 + k))
                      for step in range((epoch - 1) * steps_per_epoch + STEP_EVERY, epoch * steps_per_epoch + 1,
                                        STEP_EVERY)
                      for k, name in enumerate(STEP_METRICS)]
            points += [Point(epoch, epoch * steps_per_epoch, name, 1.0 / epoch) for name in EPOCH_METRICS]
            insert_points(session.connection(), run_id, points)
        session.commit()
    return run_id


def load(port: int, path: str, connections: int = 4, requests_each: int = 40, warmup: int = 3,
         headers: dict | None = None, expect: int = 200) -> list[float]:
    """Latencies (s) of `connections` × `requests_each` concurrent GETs, after a warm-up."""
    times: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(connections)
    errors: list[str] = []

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        try:
            for i in range(warmup + requests_each):
                if i == warmup:
                    barrier.wait()
                started = time.perf_counter()
                connection.request("GET", path, headers=headers or {})
                response = connection.getresponse()
                body = response.read()
                if response.status != expect:
                    raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
                if i >= warmup:
                    mine.append(time.perf_counter() - started)
        except Exception as error:  # reported by the caller
            errors.append(str(error))
            barrier.abort()
        finally:
            connection.close()
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(errors[0])
    return times


class Appender:
    """Adds a batch of 5 steps × 5 per-step points to a run every 0.5 s, as a worker does."""

    def __init__(self, url: str, run_id: int):
        self.url, self.run_id = url, run_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        from backend.db import session_factory
        from backend.runs.ingest import Point, insert_points

        step = EPOCHS * LOGGED_STEPS * STEP_EVERY
        with session_factory(self.url)() as session:
            while not self.stop.wait(0.5):
                points = [Point(EPOCHS + 1, step + k * STEP_EVERY, name, 0.01) for k in range(1, 6) for name in STEP_METRICS]
                step += 5 * STEP_EVERY
                insert_points(session.connection(), self.run_id, points)
                session.commit()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def etag_of(port: int, path: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.getheader("ETag")


def page_draw_times(base: str, run_id: int, loads: int = 3) -> tuple[list[float], list[float] | None]:
    """Today's run page and the one before issue 23 (scripts and plotly.js bundle; None without
    git: bench/page_versions.py), loaded alternately, both through request interception, each
    after a warm load."""
    from playwright.sync_api import sync_playwright

    from . import page_versions

    drawn = """() => {
        const page = document.getElementById('run-page');
        if (!page || page.dataset.historyLoaded !== 'true') return false;
        const traces = ['chart-accuracy', 'chart-loss', 'chart-rate'].flatMap(id => document.getElementById(id).data || []);
        const lines = document.querySelectorAll('#chart-loss .scatterlayer .trace');
        return traces.length === 10 && traces.every(t => t.x.length > 0) && lines.length === 5;
    }"""
    versions = {"now": page_versions.scripts_now(), "before": page_versions.scripts_before()}
    bundles = {"now": page_versions.bundle_now(), "before": page_versions.bundle_before()}
    times = {name: [] for name, scripts in versions.items() if scripts and bundles[name]}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(loads):
            for name in times:
                page = browser.new_page(viewport={"width": 1300, "height": 1000})
                page_versions.serve(page, versions[name], bundles[name])
                for i in range(2):  # the first load fills the browser's cache (plotly.js)
                    started = time.perf_counter()
                    page.goto(f"{base}/runs/{run_id}", wait_until="commit")
                    page.wait_for_function(drawn, polling="raf", timeout=60_000)
                    # One more frame: what was drawn is on screen.
                    page.evaluate("() => new Promise(resolve => requestAnimationFrame(() => resolve()))")
                    if i:
                        times[name].append(time.perf_counter() - started)
                page.close()
        browser.close()
    return times["now"], times.get("before")


def page_row(port: int, run_id: int) -> Row:
    times, before = page_draw_times(f"http://127.0.0.1:{port}", run_id)
    figure = statistics.median(times)
    baseline = statistics.median(before) if before else None
    return Row("run page of a 100,000-point run drawn in Chromium", figure, "s", baseline,
               figure / baseline if baseline else None, f"figure <= {TARGET_PAGE_S:g} s", figure <= TARGET_PAGE_S,
               note="median of 3 loads, each after a warm one; from navigation to every series drawn (SVG: 1,500 "
                    "points per series), plotly.js run on each load; baseline: the page's scripts and plotly.js bundle before "
                    "issue 23 (bench/page_versions.py), loaded alternately, both through request interception; load average "
                    f"{os.getloadavg()[0]:.1f}")


def measure(postgres_admin_url: str | None, sqlite: bool = False, requests_each: int = 40,
            page_only: bool = False) -> list[Row]:
    from backend.migrate import upgrade
    from backend.settings import Settings

    from .ingestion import fresh_postgres
    from .sweep_views import percentile, start_server

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as directory:
        drop = None
        if sqlite or not postgres_admin_url:
            url, backend = "", "SQLite"
        else:
            (url, drop), backend = fresh_postgres(postgres_admin_url), "PostgreSQL"
        settings = Settings(var_dir=Path(directory), database_url=url, broker_url="")
        settings.make_dirs()
        try:
            upgrade(settings.database_url)
            finished = add_long_run(settings.database_url, "succeeded")
            running = add_long_run(settings.database_url, "running")
            server, port = start_server(settings)
            try:
                if page_only:
                    rows.append(page_row(port, finished))
                    return rows
                first_read = load(port, f"/api/runs/{running}/metrics?{PAGE_QUERY}", 1, 1, warmup=0)[0]
                rows.append(Row(f"metrics of a 100,000-point run, first read by a server process, {backend}",
                                first_read * 1e3, "ms", note="all its points read and thinned; later requests read "
                                                            "only the points added since"))
                finished_path = f"/api/runs/{finished}/metrics?{PAGE_QUERY}"
                cases = [
                    ("finished run (server cache)", finished_path, {}, 200),
                    ("finished run, If-None-Match (304)", finished_path, {"If-None-Match": etag_of(port, finished_path)},
                     304),
                    ("running run, 25 points added every 0.5 s", f"/api/runs/{running}/metrics?{PAGE_QUERY}", {}, 200),
                ]
                for what, path, headers, expect in cases:
                    if path.startswith(f"/api/runs/{running}/"):
                        with Appender(settings.database_url, running):
                            times = load(port, path, 4, requests_each, headers=headers, expect=expect)
                    else:
                        times = load(port, path, 4, requests_each, headers=headers, expect=expect)
                    p95 = percentile(times, 0.95) * 1e3
                    rows.append(Row(f"metrics of a 100,000-point run, {what}, {backend}, 4 clients, 1 server process, "
                                    "p95", p95, "ms", target=f"<= {TARGET_P95_MS:g}", met=p95 <= TARGET_P95_MS,
                                    note=f"p50 {percentile(times, 0.5) * 1e3:.0f} ms; columns, 1,500 points per series "
                                         "(min/max); one process runs one request's Python at a time"))
                rows.append(page_row(port, finished))
            finally:
                server.terminate()
                server.wait(10)
        finally:
            if drop:
                from backend.db import engine_for

                engine_for.cache_clear()
                drop()
    return rows


def main() -> None:
    from .rows import print_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=os.environ.get("MISSMOD_BENCH_POSTGRES",
                                                             "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--sqlite", action="store_true", help="on SQLite instead of PostgreSQL")
    parser.add_argument("--quick", action="store_true", help="15 requests per client instead of 40")
    parser.add_argument("--page-only", action="store_true",
                        help="only the run page in Chromium, today's scripts against those before issue 23")
    args = parser.parse_args()
    print_table(measure(args.postgres, args.sqlite, 15 if args.quick else 40, page_only=args.page_only))


if __name__ == "__main__":
    main()
