"""Metric ingestion: how many points per second the worker's write path commits.

Each writer is a separate process playing one run the way the worker does since per-step
metrics: five per-step points every step (loss, the eq. 4 and eq. 5 terms, learning rate,
samples/s) and five per-epoch points, fed to the batching writer (backend/runs/ingest.py), which
commits a batch (backend.runs.recording.record_batch: one INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING, the heartbeat and
the progress, the cancel check) when its oldest point is 0.5 s old, when 10,000 points wait, and
at every epoch's end. Measured with 1 and 8 writers on PostgreSQL (a fresh database on the
server given by --postgres), beside the same batches sent through psycopg alone (the same
statements, no SQLAlchemy and no missmod) as the baseline; and on SQLite (the embedded default).

The clock starts when every writer has imported what it needs and opened its connection (a
barrier each one reaches, then the parent), and stops when the last writer has committed its
last batch (times read on the machine's monotonic clock, shared by the processes).
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from .rows import Row

STEP_METRICS = ("step/train_loss", "step/loss_complete", "step/loss_missing", "step/lr", "step/samples_per_second")
EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "test_accuracy", "test_sample_accuracy")
STEPS_PER_EPOCH = 1000  # 5,000 per-step points an epoch
MAX_BATCH = 10_000
TARGET_POSTGRES = 50_000


def _create_runs(url: str, n: int) -> list[int]:
    from backend.db import session_factory, utcnow
    from backend.runs.models import Run, RunState

    with session_factory(url)() as session:
        runs = [Run(name=f"bench {i}", spec={}, dataset="digits", method="mle", fusion="add", missing_modality="bottom",
                    missing_rate=0.9, seed=i, state=RunState.running, worker=f"bench/{i}", created_at=utcnow())
                for i in range(n)]
        session.add_all(runs)
        session.commit()
        return [run.id for run in runs]


def _workload(epochs: int):
    """(epoch, step, per-step metrics) for every step, then (epoch, None, per-epoch metrics)."""
    for epoch in range(1, epochs + 1):
        for step in range((epoch - 1) * STEPS_PER_EPOCH + 1, epoch * STEPS_PER_EPOCH + 1):
            yield epoch, step, {name: 1.0 / step for name in STEP_METRICS}
        yield epoch, None, {name: epoch / 1000 for name in EPOCH_METRICS}


def _writer(url: str, run_id: int, epochs: int, ready, results) -> None:
    """The worker's path: backend.runs.ingest.BatchingWriter through backend.runs.recording.record_batch."""
    from backend.db import session_factory
    from backend.runs import recording
    from backend.runs.ingest import BatchingWriter, points_of

    sessions = session_factory(url)
    with sessions() as session:  # connects (the pool keeps the connection), and reads who holds the run
        worker = session.execute(text("SELECT worker FROM runs WHERE id = :id"), {"id": run_id}).scalar_one()

    def write(points, run_values):
        with sessions() as session:
            return recording.record_batch(session, run_id, points, worker, **run_values)

    writer = BatchingWriter(write, interval=0.5, max_points=MAX_BATCH)
    ready.wait()
    count = 0
    for epoch, step, metrics in _workload(epochs):
        if step is None:
            writer.add(points_of(epoch, epoch * STEPS_PER_EPOCH, metrics))
            writer.flush(epochs_completed=epoch)
        else:
            writer.add(points_of(epoch, step, metrics),
                       progress={"step": step, "steps": STEPS_PER_EPOCH, "epoch": epoch})
        count += len(metrics)
    results.put((count, time.monotonic()))


def _driver_writer(url: str, run_id: int, epochs: int, ready, results) -> None:
    """The floor: the same batches (cut at the epoch's end and at 10,000 points) and the same
    statements (the names sent once per batch, as missmod does) (heartbeat UPDATE … RETURNING the cancel flag, the unnest INSERT … ON CONFLICT
    DO NOTHING, COMMIT) straight through psycopg."""
    import json

    import psycopg

    from backend.runs.ingest import POSTGRES_INSERT_SQL  # the statement's text, not missmod's code path

    connection = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    worker = connection.execute("SELECT worker FROM runs WHERE id = %s", (run_id,)).fetchone()[0]
    connection.commit()
    insert = POSTGRES_INSERT_SQL.format(
        run_id="%(run_id)s", recorded_at="now()", names="%(names)s::varchar[]", epochs="%(epochs)s::integer[]",
        steps="%(steps)s::integer[]", name_indices="%(name_indices)s::integer[]",
        values="%(values)s::double precision[]")
    buffer: list[tuple] = []
    progress = None

    def flush(epochs_completed=None):
        with connection.cursor() as cursor:
            sets = "heartbeat_at = now(), progress = %s" + (", epochs_completed = %s" if epochs_completed else "")
            params = [json.dumps(progress)] + ([epochs_completed] if epochs_completed else [])
            cursor.execute(f"UPDATE runs SET {sets} WHERE id = %s AND state = 'running' AND worker = %s "
                           "RETURNING cancel_requested", (*params, run_id, worker))
            cursor.fetchone()
            if buffer:
                positions: dict[str, int] = {}
                cursor.execute(insert, {"run_id": run_id, "epochs": [b[0] for b in buffer],
                                        "steps": [b[1] for b in buffer], "values": [b[3] for b in buffer],
                                        "name_indices": [positions.setdefault(b[2], len(positions) + 1)
                                                         for b in buffer], "names": list(positions)})
        connection.commit()
        buffer.clear()

    ready.wait()
    count = 0
    for epoch, step, metrics in _workload(epochs):
        at = epoch * STEPS_PER_EPOCH if step is None else step
        buffer.extend((epoch, at, name, value) for name, value in metrics.items())
        count += len(metrics)
        if step is None:
            flush(epochs_completed=epoch)
        else:
            progress = {"step": step, "steps": STEPS_PER_EPOCH, "epoch": epoch}
            if len(buffer) >= MAX_BATCH:
                flush()
    connection.close()
    results.put((count, time.monotonic()))


def points_per_second(url: str, writers: int, epochs: int, writer=_writer) -> float:
    run_ids = _create_runs(url, writers)
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(writers + 1, timeout=300)
    results = context.Queue()
    processes = [context.Process(target=writer, args=(url, run_id, epochs, ready, results)) for run_id in run_ids]
    for process in processes:
        process.start()
    ready.wait()  # every writer has imported and connected
    began = time.monotonic()
    finished = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
        if process.exitcode:
            raise RuntimeError(f"a writer failed (exit code {process.exitcode})")
    return sum(count for count, _ in finished) / (max(end for _, end in finished) - began)


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


def measure(postgres_admin_url: str, epochs: int = 20, sqlite: bool = True) -> list[Row]:
    """`epochs` per writer: 5,005 points each."""
    from backend.migrate import upgrade

    rows = []
    if sqlite:
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
            floor = points_per_second(url, writers, epochs, writer=_driver_writer)
            rate = points_per_second(url, writers, epochs)
            rows.append(Row(f"metric ingestion, PostgreSQL, {writers} writer(s)", rate, "points/s", baseline=floor,
                            ratio=rate / floor, target=f">= {TARGET_POSTGRES:,}", met=rate >= TARGET_POSTGRES,
                            note="per-step points in batches (at each epoch's end, 5,005 points); baseline: the same "
                                 "batches and statements through psycopg alone; clock from a barrier every writer "
                                 "reaches after its imports and connection"))
    finally:
        drop()
    return rows


def main() -> None:
    from .rows import print_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per writer (5,005 points each)")
    parser.add_argument("--quick", action="store_true", help="4 epochs per writer, PostgreSQL only")
    args = parser.parse_args()
    print_table(measure(args.postgres, 4 if args.quick else args.epochs, sqlite=not args.quick))


if __name__ == "__main__":
    main()
