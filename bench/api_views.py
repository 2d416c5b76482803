"""API latency under load and page drawing time, against a real uvicorn process.

The database (SQLite in a temporary VAR_DIR, or --database-url) holds 10,000 runs and one run
of 1,000 epochs × 5 metrics. From this process (the server is another), 1 and then 4
keep-alive connections send requests concurrently, to one uvicorn process (as `make run`
serves) and 4 to two (`--workers 2`, as docker compose serves); p50/p95 are over every request
after a warm-up. Then
Chromium opens the run page (1,000 epochs drawn) and the runs page (first page of 10,000).
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

from sqlalchemy import insert

from backend.db import session_factory, utcnow
from backend.migrate import upgrade
from backend.runs.models import MetricPoint, Run
from backend.settings import Settings

from .rows import Row
from .sweep_views import fill_runs, percentile, run_row, start_server

CHROMIUM = os.environ.get("MISSMOD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
METRICS = ("train_loss", "val_loss", "val_accuracy", "test_accuracy", "test_sample_accuracy")
TARGET_P95_MS = 100.0
TARGET_RUN_PAGE_S = 0.5


def add_long_run(settings: Settings, epochs: int = 1000) -> int:
    with session_factory(settings.database_url)() as session:
        run_id = session.execute(insert(Run).values(**run_row(10_001, "mle", "add", "bottom", 0.9, 0, "succeeded",
                                                              0.93, None, epochs))).inserted_primary_key[0]
        points = [{"run_id": run_id, "epoch": e, "name": m, "value": 1.0 / e, "recorded_at": utcnow()}
                  for e in range(1, epochs + 1) for m in METRICS]
        for start in range(0, len(points), 5000):
            session.execute(insert(MetricPoint), points[start:start + 5000])
        session.commit()
    return run_id


def load(port: int, path: str, connections: int = 4, requests_each: int = 60, warmup: int = 3) -> list[float]:
    """Latencies (s) of `connections` × `requests_each` concurrent GETs, after a warm-up."""
    times: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(connections)

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for i in range(warmup + requests_each):
            if i == warmup:
                barrier.wait()
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
            if i >= warmup:
                mine.append(time.perf_counter() - started)
        connection.close()
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


RUN_PAGE_DRAWN = """() => {
    const accuracy = document.getElementById('chart-accuracy'), lossChart = document.getElementById('chart-loss');
    if (!accuracy || !lossChart) return false;
    const traces = accuracy.data || [];
    const loss = lossChart.data || [];
    return traces.length && traces.every(t => t.x.length === 1000) && loss.length;
}"""


def page_times(base: str, run_id: int, loads: int = 3,
               runs_page_too: bool = True) -> tuple[list[float], list[float] | None, list[float]]:
    """The run page with today's scripts and plotly.js bundle and with those before issue 23 (None
    without git: bench/page_versions.py), each in a page of its own after a warm load, loaded alternately
    (a change in the machine's load weighs on both), then the runs page (of 10,000 runs)."""
    from playwright.sync_api import sync_playwright

    from . import page_versions

    versions = {"now": page_versions.scripts_now(), "before": page_versions.scripts_before()}
    bundles = {"now": page_versions.bundle_now(), "before": page_versions.bundle_before()}
    times = {name: [] for name, scripts in versions.items() if scripts and bundles[name]}
    runs_page = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pages = {}
        for name in times:
            pages[name] = browser.new_page(viewport={"width": 1300, "height": 1000})
            page_versions.serve(pages[name], versions[name], bundles[name])
        for i in range(loads + 1):  # the first load fills the browser's cache (plotly.js)
            for name, page in pages.items():
                started = time.perf_counter()
                page.goto(f"{base}/runs/{run_id}", wait_until="commit")
                # Checked in the page at every frame (a poll from here took up to 50 ms more).
                page.wait_for_function(RUN_PAGE_DRAWN, polling="raf", timeout=180_000)
                if i:
                    times[name].append(time.perf_counter() - started)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        for _ in range(loads + 1 if runs_page_too else 0):
            started = time.perf_counter()
            page.goto(f"{base}/")
            while page.evaluate("document.querySelectorAll('#runs-table tbody tr').length") < 50:
                time.sleep(0.01)
            runs_page.append(time.perf_counter() - started)
        browser.close()
    return times["now"], times.get("before"), runs_page[1:]


def measure(database_url: str | None = None) -> list[Row]:
    with tempfile.TemporaryDirectory() as directory:
        settings = Settings(var_dir=Path(directory), database_url=database_url or "", broker_url="")
        settings.make_dirs()
        upgrade(settings.database_url)
        backend = settings.database_url.split(":", 1)[0].split("+")[0]
        fill_runs(settings, 10_000)
        run_id = add_long_run(settings)
        rows: list[Row] = []
        paths = [("runs list (10,000 runs, first page)", "/api/runs?limit=50"),
                 ("runs list, filtered and sorted by accuracy",
                  "/api/runs?state=succeeded&method=mle&sort=-test_accuracy&limit=50"),
                 ("metrics of a run (1,000 epochs × 5 metrics)", f"/api/runs/{run_id}/metrics")]
        # As `make run` serves (one process), then as docker compose does (API_WORKERS=2).
        server, port = start_server(settings, processes=2)
        try:
            two_processes = {what: load(port, path, connections=4, requests_each=60) for what, path in paths}
        finally:
            server.terminate()
            server.wait(10)
        server, port = start_server(settings)
        try:
            for what, path in paths:
                for connections, processes in ((1, 1), (4, 1), (4, 2)):
                    times = (two_processes[what] if processes == 2
                             else load(port, path, connections=connections, requests_each=240 // connections))
                    p50, p95 = percentile(times, 0.5) * 1e3, percentile(times, 0.95) * 1e3
                    label = (f"{what}, {backend}, {connections} connection{'s' if connections > 1 else ''}"
                             + (", 2 server processes" if processes == 2 else ""))
                    note = ("" if connections == 1 else
                            "one uvicorn process runs one request's Python at a time: concurrent requests queue"
                            if processes == 1 else "uvicorn --workers 2, as docker compose serves (API_WORKERS)")
                    rows.append(Row(f"API p50, {label}", p50, "ms"))
                    rows.append(Row(f"API p95, {label}", p95, "ms", target=f"<= {TARGET_P95_MS:g}",
                                    met=p95 <= TARGET_P95_MS, note=note))
            run_page, run_page_before, runs_page = page_times(f"http://127.0.0.1:{port}", run_id)
            rows.append(run_page_row(run_page, run_page_before))
            rows.append(Row("runs page drawn in Chromium (10,000 runs)", sorted(runs_page)[1], "s",
                            note="median of 3 loads after a warm one"))
        finally:
            server.terminate()
            server.wait(10)
    return rows


def run_page_row(run_page: list[float], run_page_before: list[float] | None) -> Row:
    figure = statistics.median(run_page)
    before = statistics.median(run_page_before) if run_page_before else None
    return Row("run page drawn in Chromium (1,000 epochs × 5 metrics)", figure, "s", before,
               figure / before if before else None, f"figure <= {TARGET_RUN_PAGE_S:g} s", figure <= TARGET_RUN_PAGE_S,
               note="median of 3 loads (each after a warm one), from navigation to the 5 curves drawn; baseline: the "
                    "page's scripts and plotly.js bundle before issue 23 (bench/page_versions.py), loaded alternately "
                    f"with today's, both through request interception; load average {os.getloadavg()[0]:.1f}")


def run_page_rows(database_url: str | None = None) -> list[Row]:
    """The run page of 1,000 epochs × 5 metrics alone (no 10,000 runs, no API load)."""
    with tempfile.TemporaryDirectory() as directory:
        settings = Settings(var_dir=Path(directory), database_url=database_url or "", broker_url="")
        settings.make_dirs()
        upgrade(settings.database_url)
        run_id = add_long_run(settings)
        server, port = start_server(settings)
        try:
            run_page, run_page_before, _ = page_times(f"http://127.0.0.1:{port}", run_id, runs_page_too=False)
        finally:
            server.terminate()
            server.wait(10)
    return [run_page_row(run_page, run_page_before)]


def main() -> None:
    from .rows import print_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="an empty database to fill (default: SQLite in a temporary folder)")
    parser.add_argument("--run-page-only", action="store_true",
                        help="only the run page of 1,000 epochs × 5 metrics, today's scripts against those before")
    args = parser.parse_args()
    if args.run_page_only:
        print_table(run_page_rows(args.database_url))
        return
    print_table(measure(args.database_url))


if __name__ == "__main__":
    main()
