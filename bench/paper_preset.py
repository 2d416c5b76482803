"""Run a paper preset end to end on this machine and say how long it took: a fresh embedded
stack (SQLite, filesystem broker, uvicorn, Celery workers), one API call to create the sweep,
then wait for every run; optionally a screenshot of the sweep page.

    python -m bench.paper_preset --preset table1 --dataset digits --seeds 3 --epochs 20 \
        --screenshot docs/sweep-page.png

Prints the grid size, the wall time from the API call to the last run finished, and the
comparison table (test accuracy %, mean ± std over seeds) beside the paper's numbers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backend.migrate import upgrade
from backend.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MISSMOD_CHROMIUM", "/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(method, path, body=json.dumps(body) if body is not None else None,
                       headers={"content-type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, json.loads(data) if data else {}


def wait_until(predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="table1")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--slots", type=int, default=1, help="RUNS_PER_GPU of each worker")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="OMP_NUM_THREADS of each worker: tiny MLPs are fastest on one thread per worker")
    parser.add_argument("--screenshot", type=Path, help="save a full-page screenshot of the sweep page here")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as var_dir:
        settings = Settings(var_dir=Path(var_dir), database_url="", broker_url="")
        settings.make_dirs()
        upgrade(settings.database_url)
        env = {**os.environ, "VAR_DIR": var_dir, "OMP_NUM_THREADS": str(args.torch_threads),
               "RUNS_PER_GPU": str(args.slots)}
        port = free_port()
        logs = open(Path(var_dir) / "processes.log", "wb")
        processes = [subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel", "WARNING",
             "--hostname", f"bench-{i}@%h", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT, start_new_session=True)
            for i in range(args.workers)]
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "backend.main:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT,
            start_new_session=True))
        try:
            wait_until(lambda: _up(port), 60)
            time.sleep(3)  # let the workers finish importing before the clock starts
            started = time.perf_counter()
            status, sweep = call(port, "POST", f"/api/presets/{args.preset}/sweeps",
                                 {"dataset": args.dataset, "seeds": args.seeds, "epochs": args.epochs,
                                  "only_available": True})
            if status != 201:
                raise SystemExit(f"preset refused ({status}): {json.dumps(sweep, indent=1)}")
            created = time.perf_counter() - started
            progress = wait_until(lambda: _done(port, sweep["id"]), args.timeout, 1.0)
            wall = time.perf_counter() - started
            _, table = call(port, "GET", f"/api/sweeps/{sweep['id']}/table")
            if args.screenshot:
                _screenshot(port, sweep["id"], args.screenshot)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(30)
            logs.close()

    runs = len(sweep["run_ids"])
    print(f"{args.preset} on {args.dataset}: {runs} runs ({args.seeds} seeds × {runs // args.seeds} settings), "
          f"{args.epochs} epochs each; left out: {'; '.join(sweep['preset_options']['left_out']) or 'nothing'}")
    print(f"created in {created:.2f} s; all finished in {wall:.0f} s ({wall / runs:.2f} s per run) with "
          f"{args.workers} worker(s) of {args.torch_threads} thread(s); {progress['succeeded']} succeeded, "
          f"{progress['failed']} failed; {os.cpu_count()} CPUs, load average now {os.getloadavg()[0]:.1f}")
    columns = [c["label"] for c in table["columns"]]
    print(f"\n{'':<22}" + "".join(f"{c:>20}" for c in columns))
    for row in table["rows"]:
        cells = []
        for cell in row["cells"]:
            text = "–" if cell["mean"] is None else f"{100 * cell['mean']:.2f}±{100 * (cell['std'] or 0):.2f}"
            paper = f" ({100 * cell['paper']:.1f})" if cell["paper"] is not None else ""
            cells.append(f"{('*' if cell['best'] else '') + text + paper:>20}")
        print(f"{row['label']:<22}" + "".join(cells))
    print("\n* best of its column; (paper's number, "
          f"{table['paper']['dataset'] if table['paper'] else 'none'}: compare trends, not values)")


def _up(port: int) -> bool:
    try:
        return call(port, "GET", "/api/health")[0] == 200
    except OSError:
        return False


def _done(port: int, sweep_id: int):
    progress = call(port, "GET", f"/api/sweeps/{sweep_id}")[1]["progress"]
    return progress if progress["done"] else None


def _screenshot(port: int, sweep_id: int, path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        page.goto(f"http://127.0.0.1:{port}/sweeps/{sweep_id}")
        page.wait_for_selector("#sweep-page[data-drawn=true][data-stream-ended=true]", timeout=60_000)
        time.sleep(1)  # plotly's transitions
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
