"""How fast the analysis views are, measured in one run against a real uvicorn process:

1. GET /api/runs latency (p50/p95) with 10,000 runs in the database: first page, filters,
   name search, tag, sort by accuracy, and a deep page by offset and by keyset cursor;
2. the time until the sweep page of a 150-run sweep is fully drawn in Chromium (progress,
   table, trend, the run list, and the curves and confusion matrices of the chosen runs).

    python -m bench.sweep_views                       # embedded SQLite in a temporary folder
    python -m bench.sweep_views --database-url postgresql+psycopg://postgres@127.0.0.1/test_bench

The database must be empty (it is migrated here). Runs and results are written directly, not
trained: this measures the views, not the training.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import plotly
from sqlalchemy import insert

from backend.db import session_factory, utcnow
from backend.migrate import upgrade
from backend.runs.models import ConfusionMatrix, MetricPoint, Run, RunTag
from backend.runs.predictions import pack_labels
from backend.settings import Settings
from backend.sweeps.models import Sweep

from .rows import Row, print_table

ROOT = Path(__file__).resolve().parents[1]
# The complete bundle of the installed plotly package: what the pages loaded before the partial one.
PLOTLY_FULL = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
CHROMIUM = os.environ.get("MISSMOD_CHROMIUM", "/usr/bin/chromium")
METRICS = ("train_loss", "val_loss", "val_accuracy", "test_accuracy")


def run_row(i: int, method: str, fusion: str, modality: str, rate: float, seed: int, state: str,
            accuracy: float | None, sweep_id: int | None, epochs: int) -> dict:
    spec = {"dataset": "digits", "method": method, "fusion": fusion, "missing_modality": modality,
            "missing_rate": rate, "epochs": epochs, "seed": seed, "lr": 0.001, "batch_size": 64,
            "weight_decay": 0.0, "feature_dim": 64, "hidden_dim": 128, "reference_set": "auto", "device": "auto"}
    now = utcnow()
    finished = state in ("succeeded", "failed", "cancelled")
    return {"name": f"{method}-{fusion} digits {modality}@{rate:g} s{seed} #{i}", "spec": spec, "dataset": "digits",
            "method": method, "fusion": fusion, "missing_modality": modality, "missing_rate": rate, "seed": seed,
            "state": state, "created_at": now, "started_at": now if state != "queued" else None,
            "finished_at": now if finished else None, "heartbeat_at": now if state != "queued" else None,
            "worker": "bench", "attempts": 1, "cancel_requested": False,
            "epochs_completed": epochs if finished else 0, "test_accuracy": accuracy,
            "val_accuracy": accuracy, "best_epoch": epochs if accuracy is not None else None,
            "info": {"n_train": 1257, "seconds": 1.0}, "sweep_id": sweep_id}


def fill_runs(settings: Settings, n_runs: int) -> int:
    """`n_runs` runs in 100-run sweeps with a realistic mix of states and tags. Returns a sweep id."""
    rng = random.Random(0)
    grid = list(itertools.product(["mle", "lower_bound", "zero_padding"], ["add", "concat"], ["top", "bottom"],
                                  [0.5, 0.8, 0.9, 0.95], range(5)))
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        sweep_ids = [session.execute(insert(Sweep).values(name=f"bench sweep {s}", created_at=utcnow(), grid={},
                                                           preset=None, preset_options=None)).inserted_primary_key[0]
                     for s in range(n_runs // 100)]
        rows = []
        for i in range(n_runs):
            method, fusion, modality, rate, seed = grid[i % len(grid)]
            state = rng.choices(["succeeded", "failed", "queued", "running", "cancelled"], [85, 5, 6, 2, 2])[0]
            accuracy = round(rng.uniform(0.6, 0.99), 6) if state == "succeeded" else None
            rows.append(run_row(i, method, fusion, modality, rate, seed, state, accuracy, sweep_ids[i // 100], 30))
        for start in range(0, n_runs, 1000):
            session.execute(insert(Run), rows[start:start + 1000])
        run_ids = [i + 1 for i in range(n_runs)]
        session.execute(insert(RunTag), [{"run_id": run_id, "tag": tag} for run_id in run_ids[::7]
                                         for tag in ("baseline", "bench")])
        session.commit()
    return sweep_ids[len(sweep_ids) // 2]


def fill_sweep(settings: Settings, epochs: int) -> int:
    """A finished 150-run sweep (5 method/fusion rows × 2 modalities × 3 rates × 5 seeds) with
    every run's per-epoch points and confusion matrix, as the worker would leave them."""
    rng = random.Random(1)
    rows_spec = [("mle", "add"), ("mle", "concat"), ("mle", "outer"), ("zero_padding", "add"), ("lower_bound", "add")]
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        sweep_id = session.execute(insert(Sweep).values(
            name="bench: 150-run sweep", created_at=utcnow(), grid={}, preset="table1",
            preset_options={"roles": {"visual": "top", "audio": "bottom"}, "left_out": []})).inserted_primary_key[0]
        for i, (seed, (method, fusion), modality, rate) in enumerate(itertools.product(
                range(5), rows_spec, ["top", "bottom"], [0.8, 0.9, 0.95])):
            accuracy = round(rng.uniform(0.8, 0.97), 6)
            run_id = session.execute(insert(Run).values(**run_row(i, method, fusion, modality, rate, seed, "succeeded",
                                                                  accuracy, sweep_id, epochs))).inserted_primary_key[0]
            points = [{"run_id": run_id, "epoch": e, "name": m, "value": rng.random(), "recorded_at": utcnow()}
                      for e in range(1, epochs + 1) for m in METRICS]
            session.execute(insert(MetricPoint), points)
            # The seed's test set (270 samples, as digits), predicted right with the run's accuracy.
            labels = random.Random(seed).choices(range(10), k=270)
            predicted = [z if rng.random() < accuracy else (z + 1) % 10 for z in labels]
            counts = [[0] * 10 for _ in range(10)]
            for z, guess in zip(labels, predicted):
                counts[z][guess] += 1
            session.execute(insert(ConfusionMatrix).values(
                run_id=run_id, epoch=epochs, classes=[str(c) for c in range(10)], counts=counts,
                test_predictions=pack_labels(predicted, 10), test_labels=pack_labels(labels, 10)))
        session.commit()
    return sweep_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(settings: Settings, processes: int = 1) -> tuple[subprocess.Popen, int]:
    """uvicorn serving the app from `processes` worker processes (its --workers)."""
    port = free_port()
    env = {**os.environ, "VAR_DIR": str(settings.var_dir), "DATABASE_URL": settings.database_url,
           "BROKER_URL": settings.broker_url}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "backend.main:create_app",
                               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                               "--workers", str(processes)],
                              cwd=ROOT, env=env)
    deadline = time.monotonic() + 180  # a loaded machine: importing the app can take a minute
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/api/health")
            if connection.getresponse().status in (200, 503):
                return server, port
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not start")


def latencies(port: int, path: str, repeat: int) -> list[float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for i in range(repeat + 3):
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
        if i >= 3:  # the first requests warm caches and the connection pool
            times.append(elapsed)
    connection.close()
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def deep_cursor(port: int, params: dict, pages: int) -> str:
    """The cursor of page `pages` + 1, walked from the first page."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    cursor = None
    for _ in range(pages):
        connection.request("GET", "/api/runs?" + urlencode({**params, **({"cursor": cursor} if cursor else {})}))
        cursor = json.loads(connection.getresponse().read())["next_cursor"]
    connection.close()
    return cursor


def bench_runs_list(port: int, sweep_id: int, repeat: int) -> list[tuple[str, list[float]]]:
    deep = deep_cursor(port, {"limit": 50}, 199)
    deep_sorted = deep_cursor(port, {"limit": 50, "sort": "-test_accuracy"}, 150)
    queries = [
        ("first page (50, newest first)", "/api/runs?limit=50"),
        ("state + method filter", "/api/runs?state=succeeded&method=mle&limit=50"),
        ("one sweep, succeeded (100)", f"/api/runs?sweep={sweep_id}&state=succeeded&limit=100"),
        ("name search", "/api/runs?q=bottom%400.9+s3&limit=50"),
        ("tag", "/api/runs?tag=baseline&limit=50"),
        ("sorted by test accuracy", "/api/runs?sort=-test_accuracy&limit=50"),
        ("page 200 by offset", "/api/runs?limit=50&offset=9950"),
        ("page 200 by cursor", "/api/runs?" + urlencode({"limit": 50, "cursor": deep})),
        ("page 151 by accuracy, by cursor", "/api/runs?" + urlencode({"limit": 50, "sort": "-test_accuracy",
                                                                      "cursor": deep_sorted})),
        # The query language (backend/runs/query.py): spec fields are read from the JSON spec
        # (no index), final metrics by a correlated subquery per run.
        ("where accuracy>0.9", "/api/runs?" + urlencode({"limit": 50, "where": "accuracy>0.9"})),
        ("where on spec fields (lr, encoder)", "/api/runs?" + urlencode(
            [("limit", 50), ("where", "lr>=0.001"), ("where", "encoder=mlp")])),
        ("where metrics.val_accuracy>0.9", "/api/runs?" + urlencode({"limit": 50,
                                                                     "where": "metrics.val_accuracy>0.9"})),
        ("sorted by a spec field (lr)", "/api/runs?sort=-lr&limit=50"),
        ("CSV of one sweep (100 runs)", f"/api/runs?sweep={sweep_id}&format=csv"),
    ]
    return [(label, latencies(port, path, repeat)) for label, path in queries]


SHOWN = """() => ({
    runs: document.querySelectorAll('#sweep-runs tbody tr').length,
    cells: document.querySelectorAll('#sweep-table td[data-mean]').length,
    paired: document.querySelectorAll('#sweep-table td .paired').length,
    trends: document.querySelectorAll('#trend-charts .chart[data-ready=true]').length,
    curves: (document.getElementById('chart-curves').data || []).length,
    matrices: document.querySelectorAll('#confusion-grid .chart[data-ready=true]').length})"""
EVERYTHING = {"runs": 150, "cells": 30, "paired": 30, "trends": 2, "curves": 5, "matrices": 5}
def bench_sweep_page(port: int, sweep_id: int, loads: int,
                     variants: dict[str, dict] | None = None) -> dict[str, tuple[list[float], list[float]]]:
    """Per variant, seconds from navigation to the page saying its first view is drawn
    (data-drawn: table, run list, the chosen runs' data, every chart in the window) and to every
    chart drawn (the others are drawn when the browser is idle), per load. The variants' loads
    alternate (a change in the machine's load weighs on each alike), each after a warm one.
    A variant: `bundle`, a plotly.js bundle (bytes) served in place of the page's, and
    `scripts`, the page's scripts (bench/page_versions.py), both through request interception —
    which turns the HTTP cache off for them; {} is the page as served. Default: as served only.
    Each load is a page in a browser context of its own: a first visit, nothing cached."""
    from playwright.sync_api import sync_playwright

    from . import page_versions

    variants = variants if variants is not None else {"served": {}}
    times = {name: ([], []) for name in variants}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        for i in range(loads + 1):
            for name, variant in variants.items():
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                if variant:
                    page_versions.serve(page, variant.get("scripts", {}), variant.get("bundle"))
                page.goto(f"http://127.0.0.1:{port}/sweeps/{sweep_id}")
                page.wait_for_selector("#sweep-page[data-drawn=true]", timeout=120_000)
                drawn_ms = float(page.get_attribute("#sweep-page", "data-drawn-at"))  # performance.now(): since navigation
                deadline = time.monotonic() + 120
                while (shown := page.evaluate(SHOWN)) != EVERYTHING:
                    assert time.monotonic() < deadline, shown
                    time.sleep(0.02)
                all_ms = max(drawn_ms, float(page.evaluate("document.body.dataset.chartsDrawnAt")))
                if i:  # the first load warms the server and the browser cache of plotly.js
                    times[name][0].append(drawn_ms / 1000)
                    times[name][1].append(all_ms / 1000)
                page.close()
        browser.close()
    return times


def page_rows(port: int, sweep_id: int, loads: int) -> list[Row]:
    """The 150-run sweep page: today's scripts and plotly.js bundle against those before issue 23
    (bench/page_versions.py), then as served, then with the complete plotly.js bundle in place
    of today's, all measured in this run (the variants' loads alternate)."""
    from . import page_versions

    before = page_versions.scripts_before()
    bundle_before = page_versions.bundle_before()
    now = {"scripts": page_versions.scripts_now(), "bundle": page_versions.bundle_now()}
    variants = {"now": now, "served": {}, "complete": {"scripts": now["scripts"], "bundle": PLOTLY_FULL.read_bytes()}}
    if before and bundle_before:
        variants["before"] = {"scripts": before, "bundle": bundle_before}
    times = bench_sweep_page(port, sweep_id, loads, variants)
    median = statistics.median
    first = {name: median(first_view) for name, (first_view, _) in times.items()}
    everything = {name: median(all_drawn) for name, (_, all_drawn) in times.items()}
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    old = "the page's scripts and plotly.js bundle (the cartesian partial one) before issue 23 " \
          "(bench/page_versions.py), loaded alternately with today's, all through request interception"
    has_before = "before" in variants
    return [
        Row("sweep page, 150 runs, everything drawn", everything["now"], "s", everything.get("before"),
            everything["now"] / everything["before"] if has_before else None, "figure <= 1 s",
            everything["now"] <= 1.0,
            note=f"median of {loads} first visits, navigation to the table, the 150-run list, 2 trend charts and "
                 f"the 5 chosen runs' curves and confusion matrices all drawn; baseline: {old}; {load}"),
        Row("sweep page, 150 runs, first view drawn", first["now"], "s", first.get("before"),
            first["now"] / first["before"] if has_before else None, "figure <= 1 s", first["now"] <= 1.0,
            note="the table, the run list, the chosen runs' points and every chart inside the 1280×900 window; "
                 f"the charts below are drawn when the browser is idle; baseline: {old}"),
        Row("sweep page, 150 runs, everything drawn, as served", everything["served"], "s",
            note="the page's scripts and plotly.js fetched from the server (a first visit: nothing cached)"),
        Row.compared("sweep page, 150 runs, everything drawn, today's/complete plotly.js bundle",
                     everything["now"], everything["complete"], "s",
                     note="today's scripts with each bundle, both through request interception"),
    ]


def measure(loads: int = 3, epochs: int = 100) -> list[Row]:
    """`make bench`'s rows of the sweep page (a 150-run sweep, nothing else in the database)."""
    with tempfile.TemporaryDirectory() as var_dir:
        settings = Settings(var_dir=Path(var_dir), database_url="", broker_url="")
        settings.make_dirs()
        upgrade(settings.database_url)
        sweep_id = fill_sweep(settings, epochs)
        server, port = start_server(settings)
        try:
            return page_rows(port, sweep_id, loads)
        finally:
            server.terminate()
            server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="", help="an empty database (default: SQLite in a temp folder)")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=100, help="requests per query")
    parser.add_argument("--loads", type=int, default=5, help="sweep page loads")
    parser.add_argument("--epochs", type=int, default=100, help="epochs of each run of the 150-run sweep")
    parser.add_argument("--sweep-page-only", action="store_true",
                        help="only the sweep page, as `make bench` measures it (no 10,000-run list)")
    parser.add_argument("--no-page", action="store_true", help="skip the sweep page in Chromium (quick)")
    args = parser.parse_args()
    if args.sweep_page_only:
        print_table(measure(args.loads, args.epochs))
        return

    with tempfile.TemporaryDirectory() as var_dir:
        settings = Settings(var_dir=Path(var_dir), database_url=args.database_url, broker_url="")
        settings.make_dirs()
        upgrade(settings.database_url)
        started = time.perf_counter()
        sweep_in_runs = fill_runs(settings, args.runs)
        sweep_id = fill_sweep(settings, args.epochs)
        fill_seconds = time.perf_counter() - started
        server, port = start_server(settings)
        try:
            list_results = bench_runs_list(port, sweep_in_runs, args.repeat)
            page_times = [] if args.no_page else bench_sweep_page(port, sweep_id, args.loads)["served"][1]
        finally:
            server.terminate()
            server.wait(10)

    backend = settings.database_url.split(":", 1)[0].split("+")[0]
    print(f"database: {backend}; {args.runs + 150:,} runs in it (+ {150 * args.epochs * len(METRICS):,} metric points),"
          f" written in {fill_seconds:.1f} s; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"\nGET /api/runs, {args.repeat} requests each, one keep-alive connection:")
    print(f"  {'query':<34} {'p50 ms':>8} {'p95 ms':>8}")
    for label, times in list_results:
        print(f"  {label:<34} {1000 * percentile(times, 0.5):8.1f} {1000 * percentile(times, 0.95):8.1f}")
    if not page_times:
        return
    print(f"\nsweep page of 150 runs ({args.epochs} epochs each) fully drawn in Chromium, {args.loads} loads:")
    print(f"  median {statistics.median(page_times):.2f} s, min {min(page_times):.2f} s, max {max(page_times):.2f} s"
          f"  (navigation start → table, 2 trend charts, 150-run list, 5 chosen runs' curves and confusion matrices)")


if __name__ == "__main__":
    main()
