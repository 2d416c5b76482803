"""Metric ingestion: how many points per second the worker's write path commits.

Each writer is a separate process playing one run the way the worker does: one transaction
per epoch through `backend.runs.lease.record_epoch` (5 points, the progress, a heartbeat,
and the cancel check). Measured on SQLite (the embedded default, in a temporary VAR_DIR) and
on PostgreSQL (a fresh database on the server given by --postgres), with 1 and 8 writers; on
PostgreSQL beside the same statements sent through psycopg alone, as the baseline.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from backend.db import session_factory, utcnow
from backend.migrate import upgrade
from backend.runs import lease
from backend.runs.models import Run, RunState

from .rows import Row

METRICS = ("train_loss", "val_loss", "val_accuracy", "test_accuracy", "test_sample_accuracy")
TARGET_POSTGRES = 10_000


def _create_runs(url: str, n: int) -> list[int]:
    with session_factory(url)() as session:
        runs = [Run(name=f"bench {i}", spec={}, dataset="digits", method="mle", fusion="add", missing_modality="bottom",
                    missing_rate=0.9, seed=i, state=RunState.running, created_at=utcnow()) for i in range(n)]
        session.add_all(runs)
        session.commit()
        return [run.id for run in runs]


def _writer(url: str, run_id: int, epochs: int, start, counts) -> None:
    sessions = session_factory(url)
    start.wait()
    for epoch in range(1, epochs + 1):
        with sessions() as session:
            lease.record_epoch(session, run_id, epoch, {name: epoch / 1000 for name in METRICS})
    counts.put(epochs * len(METRICS))


def _driver_writer(url: str, run_id: int, epochs: int, start, counts) -> None:
    """The floor: the same statements per epoch (heartbeat UPDATE … RETURNING the cancel flag,
    the points' INSERT … ON CONFLICT DO NOTHING, COMMIT) straight through psycopg."""
    import psycopg

    connection = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    start.wait()
    for epoch in range(1, epochs + 1):
        with connection.cursor() as cursor:
            cursor.execute("UPDATE runs SET heartbeat_at = now(), epochs_completed = %s WHERE id = %s "
                           "RETURNING cancel_requested", (epoch, run_id))
            cursor.fetchone()
            cursor.executemany("INSERT INTO metric_points (run_id, epoch, name, value, recorded_at) "
                               "VALUES (%s, %s, %s, %s, now()) ON CONFLICT DO NOTHING",
                               [(run_id, epoch, name, epoch / 1000) for name in METRICS])
        connection.commit()
    connection.close()
    counts.put(epochs * len(METRICS))


def points_per_second(url: str, writers: int, seconds_per_writer_hint: int = 400, writer=_writer) -> float:
    run_ids = _create_runs(url, writers)
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    counts = context.Queue()
    processes = [context.Process(target=writer, args=(url, run_id, seconds_per_writer_hint, start, counts))
                 for run_id in run_ids]
    for process in processes:
        process.start()
    time.sleep(2.0)  # let every process import and connect before the clock starts
    began = time.perf_counter()
    start.set()
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - began
    total = sum(counts.get() for _ in processes)
    return total / elapsed


def fresh_postgres(admin_url: str) -> tuple[str, callable]:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"missmod_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return f"{admin_url.rsplit('/', 1)[0]}/{name}", drop


def measure(postgres_admin_url: str, epochs: int = 400) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        sqlite_url = f"sqlite:///{Path(directory) / 'bench.db'}"
        upgrade(sqlite_url)
        for writers in (1, 8):
            rate = points_per_second(sqlite_url, writers, epochs)
            rows.append(Row(f"metric ingestion, SQLite, {writers} writer(s)", rate, "points/s",
                            note="" if writers == 1 else "SQLite has one writer at a time (WAL): writers queue"))
    url, drop = fresh_postgres(postgres_admin_url)
    try:
        upgrade(url)
        for writers in (1, 8):
            rate = points_per_second(url, writers, epochs)
            floor = points_per_second(url, writers, epochs, writer=_driver_writer)
            rows.append(Row(f"metric ingestion, PostgreSQL, {writers} writer(s)", rate, "points/s", baseline=floor,
                            ratio=rate / floor, target=f">= {TARGET_POSTGRES:,}", met=rate >= TARGET_POSTGRES,
                            note="baseline: the same three statements per epoch through psycopg alone, the floor "
                                 "of one durable transaction per epoch"))
    finally:
        drop()
    return rows


def main() -> None:
    from .rows import print_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--epochs", type=int, default=400, help="epochs (transactions) per writer")
    args = parser.parse_args()
    print_table(measure(args.postgres, args.epochs))


if __name__ == "__main__":
    main()
