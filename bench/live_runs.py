"""Points per second a script logs into a live run through the client (missmod/live.py): one
script, its own loop calling `run.log(step=…, epoch=…, …)`, the client's background thread
batching them to a real API server process on PostgreSQL (POST /api/runs/{id}/live/points, the
workers' ingestion). The clock runs from the first `log` until `flush` returns: every point is
then committed. Target: ≥ 20,000 points/s (MLflow's 1,000-point log_batch measured 2,061–2,913
on this machine, and an external run posted in one call about 1,500).

    python -m bench.live_runs [--postgres URL] [--steps N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from .api_server import free_port, serve_api
from .ingestion import fresh_postgres
from .rows import Row

TARGET = 20_000
METRICS_PER_STEP = 4  # train_loss, lr, grad_norm, samples_per_second: a worker's step series


def log_points(url: str, steps: int) -> tuple[float, int]:
    """(points/s, points) of one script logging `steps` steps of METRICS_PER_STEP metrics."""
    from missmod.client import Client

    with Client(url) as client:
        with client.start_run(dataset="digits", method_label="bench", missing_modality="bottom", missing_rate=0.9,
                              seed=0, steps_per_epoch=1000) as run:
            began = time.perf_counter()
            for step in range(1, steps + 1):
                run.log(step=step, epoch=(step - 1) // 1000 + 1, train_loss=1.0 / step, lr=1e-3, grad_norm=0.5,
                        samples_per_second=1234.5)
            run.flush()
            elapsed = time.perf_counter() - began
        stored = len(client.metrics(run.id))
    points = steps * METRICS_PER_STEP
    if stored != points:
        raise RuntimeError(f"{stored} points stored, {points} logged")
    return points / elapsed, points


def measure(postgres_admin_url: str, steps: int = 50_000) -> list[Row]:
    from backend.migrate import upgrade
    from backend.settings import Settings

    database_url, drop = fresh_postgres(postgres_admin_url)
    server = None
    try:
        upgrade(database_url)
        with tempfile.TemporaryDirectory() as directory:
            settings = Settings(var_dir=Path(directory) / "var", database_url=database_url, broker_url="")
            settings.make_dirs()
            port = free_port()
            server = serve_api(settings, port, patience=300)  # a loaded machine starts it slowly
            log_points(f"http://127.0.0.1:{port}", 2_000)  # warm: imports, connections, the first statements
            rate, points = log_points(f"http://127.0.0.1:{port}", steps)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        drop()
    load = os.getloadavg()[0]
    return [Row("live run logged by a script through the client, PostgreSQL, 1 script", rate, "points/s",
                target=f">= {TARGET:,}", met=rate >= TARGET,
                note=f"{points:,} points ({METRICS_PER_STEP} metrics a step), first log to flush returned (every "
                     f"point committed); one API process; load average {load:.1f} when measured")]


def main() -> None:
    from .rows import print_table

    parser = argparse.ArgumentParser(prog="python -m bench.live_runs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=os.environ.get("MISSMOD_BENCH_POSTGRES",
                                                             "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--steps", type=int, default=50_000)
    args = parser.parse_args()
    print_table(measure(args.postgres, args.steps))


if __name__ == "__main__":
    main()
