"""Run life cycle as plain functions over a session: the API creates, lists and cancels;
the worker starts, records epochs and finishes. Every SQL statement about runs lives here."""

from __future__ import annotations

import math
from collections.abc import Mapping

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..db import utcnow
from ..queue import RunQueue
from .models import ConfusionMatrix, MetricPoint, Run, RunState
from .schemas import RunCreate


class RunNotFound(LookupError):
    pass


class RunFinished(RuntimeError):
    """The run is already in a terminal state."""


def default_run_name(spec: RunCreate) -> str:
    return f"{spec.method}-{spec.fusion} {spec.dataset} {spec.missing_modality}@{spec.missing_rate:g} s{spec.seed}"


def create_run(session: Session, payload: RunCreate, queue: RunQueue) -> Run:
    """Commit the run, then send its id: a worker never sees an id that is not in the
    database. If the broker cannot be reached the run is marked failed, not left queued."""
    run = Run(
        name=payload.name or default_run_name(payload),
        spec=payload.training_spec(),
        dataset=payload.dataset,
        method=payload.method,
        fusion=payload.fusion,
        missing_modality=payload.missing_modality,
        missing_rate=payload.missing_rate,
        seed=payload.seed,
        state=RunState.queued,
        created_at=utcnow(),
    )
    session.add(run)
    session.commit()
    try:
        queue.enqueue(run.id)
    except Exception as error:  # the broker is down or misconfigured
        run.state = RunState.failed
        run.finished_at = utcnow()
        run.error = f"could not send the run to the broker: {error}"
        session.commit()
        raise
    return run


def list_runs(session: Session, *, state: str | None = None, method: str | None = None,
              dataset: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[Run], int]:
    query = select(Run)
    if state:
        query = query.where(Run.state == state)
    if method:
        query = query.where(Run.method == method)
    if dataset:
        query = query.where(Run.dataset == dataset)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    runs = session.scalars(query.order_by(Run.id.desc()).limit(limit).offset(offset)).all()
    return list(runs), int(total or 0)


def get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(run_id)
    return run


def request_cancel(session: Session, run_id: int) -> Run:
    """A queued run is cancelled at once; a running one is flagged and stops at the end of
    its current epoch, keeping its metrics."""
    run = get_run(session, run_id)
    if run.is_terminal:
        raise RunFinished(f"run {run_id} is already {run.state}")
    run.cancel_requested = True
    if run.state == RunState.queued:
        run.state = RunState.cancelled
        run.finished_at = utcnow()
    session.commit()
    return run


def metrics_after(session: Session, run_id: int, after: int = 0, limit: int = 10_000) -> list[MetricPoint]:
    """Points recorded after the cursor `after` (a point id), in the order they landed."""
    query = (
        select(MetricPoint)
        .where(MetricPoint.run_id == run_id, MetricPoint.id > after)
        .order_by(MetricPoint.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def confusion_of(session: Session, run_id: int) -> ConfusionMatrix | None:
    return session.get(ConfusionMatrix, run_id)


def requeue_interrupted(session: Session, worker_prefix: str, queue: RunQueue) -> list[int]:
    """Runs left `running` by workers whose name starts with `worker_prefix` (stopped while
    training) go back to `queued` and are sent again, so stopping the local stack loses no run."""
    runs = session.scalars(select(Run).where(Run.state == RunState.running, Run.worker.startswith(worker_prefix))).all()
    for run in runs:
        run.state = RunState.queued
        run.error = "interrupted: its worker stopped while training; queued again"
    session.commit()
    for run in runs:
        queue.enqueue(run.id)
    return [run.id for run in runs]


# --- the worker's side ---------------------------------------------------------------


def start_run(session: Session, run_id: int, worker: str) -> Run | None:
    """Mark the run running; None when it must not run (gone, finished, or cancelled while
    queued). A redelivered run that was running starts again as a new attempt."""
    run = session.get(Run, run_id)
    if run is None or run.is_terminal:
        return None
    if run.cancel_requested:
        run.state, run.finished_at = RunState.cancelled, utcnow()
        session.commit()
        return None
    now = utcnow()
    run.state = RunState.running
    run.started_at = run.started_at or now
    run.heartbeat_at = now
    run.worker = worker
    run.attempts += 1
    run.error = run.error_detail = None
    session.commit()
    return run


def _insert_ignoring_duplicates(session: Session):
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(MetricPoint)
    if dialect == "sqlite":
        return sqlite.insert(MetricPoint)
    raise NotImplementedError(f"metric points need an insert-or-ignore for {dialect}")


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def record_points(session: Session, run_id: int, epoch: int, metrics: Mapping[str, float]) -> bool:
    """Write points (idempotently) and a heartbeat in one transaction; returns whether a
    cancel was requested."""
    now = utcnow()
    rows = [{"run_id": run_id, "epoch": epoch, "name": name, "value": _finite_or_none(value), "recorded_at": now}
            for name, value in metrics.items()]
    if rows:
        insert = _insert_ignoring_duplicates(session)
        session.execute(insert.values(rows).on_conflict_do_nothing(index_elements=["run_id", "epoch", "name"]))
    session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=now))
    cancel = session.scalar(select(Run.cancel_requested).where(Run.id == run_id))
    session.commit()
    return bool(cancel)


def record_epoch(session: Session, run_id: int, epoch: int, metrics: Mapping[str, float]) -> bool:
    """One finished epoch: its points, the progress and a heartbeat, committed together.
    Returns whether a cancel was requested."""
    session.execute(update(Run).where(Run.id == run_id).values(epochs_completed=epoch))
    return record_points(session, run_id, epoch, metrics)


def record_stage(session: Session, run_id: int, progress: Mapping) -> bool:
    """A stage before training (preprocessing) in run.info, with a heartbeat; returns whether
    a cancel was requested."""
    session.execute(update(Run).where(Run.id == run_id).values(info=dict(progress), heartbeat_at=utcnow()))
    cancel = session.scalar(select(Run.cancel_requested).where(Run.id == run_id))
    session.commit()
    return bool(cancel)


def record_info(session: Session, run_id: int, info: Mapping) -> None:
    session.execute(update(Run).where(Run.id == run_id).values(info=dict(info), heartbeat_at=utcnow()))
    session.commit()


def beat(session: Session, run_id: int) -> None:
    session.execute(update(Run).where(Run.id == run_id, Run.state == RunState.running).values(heartbeat_at=utcnow()))
    session.commit()


def finish_run(session: Session, run_id: int, *, cancelled: bool, test_accuracy: float | None,
               val_accuracy: float | None, best_epoch: int | None, classes: list[str],
               confusion: list[list[int]] | None, info: Mapping) -> None:
    """Store the final result. A cancelled run keeps its metrics and its best epoch so far
    (none when it was cancelled before its first epoch)."""
    run = get_run(session, run_id)
    run.state = RunState.cancelled if cancelled else RunState.succeeded
    run.finished_at = utcnow()
    run.test_accuracy, run.val_accuracy, run.best_epoch = test_accuracy, val_accuracy, best_epoch
    run.info = dict(info)
    if confusion is not None and best_epoch is not None:
        session.merge(ConfusionMatrix(run_id=run_id, epoch=best_epoch, classes=list(classes), counts=confusion))
    session.commit()


def fail_run(session: Session, run_id: int, error: str, detail: str | None = None) -> None:
    session.rollback()
    run = session.get(Run, run_id)
    if run is None:
        return
    run.state = RunState.failed
    run.finished_at = utcnow()
    run.error, run.error_detail = error, detail
    session.commit()
