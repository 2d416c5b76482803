"""Run life cycle as plain functions over a session: the API creates, lists and cancels;
the worker starts, records epochs and finishes. Every SQL statement about runs lives here."""

from __future__ import annotations

import base64
import binascii
import json
import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..db import utcnow
from ..queue import RunQueue
from .downsample import downsample_min_max
from .models import ConfusionMatrix, MetricPoint, Run, RunState, RunTag
from .schemas import RunCreate


class RunNotFound(LookupError):
    pass


class RunFinished(RuntimeError):
    """The run is already in a terminal state."""


class RunNotRetryable(RuntimeError):
    """Only a failed or cancelled run can be retried."""


class InvalidCursor(ValueError):
    """A `cursor` that this server did not hand out for this sort order."""


def default_run_name(spec: RunCreate) -> str:
    return f"{spec.method}-{spec.fusion} {spec.dataset} {spec.missing_modality}@{spec.missing_rate:g} s{spec.seed}"


def new_run(payload: RunCreate, sweep_id: int | None = None) -> Run:
    """The row of a validated spec, not yet added to a session."""
    return Run(
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
        sweep_id=sweep_id,
    )


def enqueue_committed(session: Session, runs: Sequence[Run], queue: RunQueue) -> None:
    """Send the ids of runs already committed, in order. If the broker cannot be reached, the
    runs not sent are marked failed (not left queued forever) and the error is raised."""
    for index, run in enumerate(runs):
        try:
            queue.enqueue(run.id)
        except Exception as error:  # the broker is down or misconfigured
            unsent = [r.id for r in runs[index:]]
            session.execute(
                update(Run).where(Run.id.in_(unsent), Run.state == RunState.queued)
                .values(state=RunState.failed, finished_at=utcnow(),
                        error=f"could not send the run to the broker: {error}")
            )
            session.commit()
            for r in runs[index:]:
                session.refresh(r)
            raise


def create_run(session: Session, payload: RunCreate, queue: RunQueue) -> Run:
    """Commit the run, then send its id: a worker never sees an id that is not in the
    database. If the broker cannot be reached the run is marked failed, not left queued."""
    run = new_run(payload)
    session.add(run)
    session.commit()
    enqueue_committed(session, [run], queue)
    return run


# --- listing ----------------------------------------------------------------------------

# What the runs table can be sorted by; `id` is creation order.
SORT_COLUMNS = {
    "id": Run.id, "name": Run.name, "state": Run.state, "dataset": Run.dataset, "method": Run.method,
    "fusion": Run.fusion, "missing_modality": Run.missing_modality, "missing_rate": Run.missing_rate,
    "seed": Run.seed, "epochs_completed": Run.epochs_completed, "test_accuracy": Run.test_accuracy,
}
SORT_CHOICES = sorted([*SORT_COLUMNS, *(f"-{name}" for name in SORT_COLUMNS)])


@dataclass(frozen=True)
class RunFilters:
    """The filters of GET /api/runs; None (or empty) means no filter."""

    states: Sequence[str] = ()
    dataset: str | None = None
    method: str | None = None
    fusion: str | None = None
    missing_modality: str | None = None
    missing_rate: float | None = None
    sweep_id: int | None = None
    tag: str | None = None
    search: str | None = None  # substring of the name, case-insensitive

    def conditions(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.states:
            where.append(Run.state.in_(list(self.states)))
        for column, value in ((Run.dataset, self.dataset), (Run.method, self.method), (Run.fusion, self.fusion),
                              (Run.missing_modality, self.missing_modality)):
            if value:
                where.append(column == value)
        if self.missing_rate is not None:
            # Rates are typed by people (0.9) and stored as doubles: compare with a tolerance.
            where.append(Run.missing_rate.between(self.missing_rate - 1e-9, self.missing_rate + 1e-9))
        if self.sweep_id is not None:
            where.append(Run.sweep_id == self.sweep_id)
        if self.tag:
            where.append(Run.id.in_(select(RunTag.run_id).where(RunTag.tag == self.tag)))
        if self.search:
            where.append(Run.name.icontains(self.search, autoescape=True))
        return where


def _encode_cursor(sort: str, value, run_id: int) -> str:
    raw = json.dumps([sort, value, run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str) -> tuple[object, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_sort, value, run_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise InvalidCursor("not a cursor this server handed out") from None
    if cursor_sort != sort or not isinstance(run_id, int) or isinstance(value, (list, dict)):
        raise InvalidCursor(f"the cursor was made for sort {cursor_sort!r}, not {sort!r}")
    return value, run_id


def _after_cursor(column, descending: bool, value, run_id: int) -> ColumnElement[bool]:
    """Rows after (value, id) in the order `column` (NULLs last), `id` — keyset pagination:
    the database seeks to the position through the index instead of counting an offset."""
    tie = Run.id < run_id if descending else Run.id > run_id
    if column is Run.id:
        return tie
    if value is None:
        return and_(column.is_(None), tie)
    beyond = column < value if descending else column > value
    if not column.nullable:
        return or_(beyond, and_(column == value, tie))
    return or_(beyond, and_(column == value, tie), column.is_(None))


def list_runs(session: Session, filters: RunFilters = RunFilters(), *, sort: str = "-id", limit: int = 50,
              offset: int = 0, cursor: str | None = None) -> tuple[list[Run], int, str | None]:
    """One page of runs, the total that match, and the cursor of the next page (None at the
    end). Pages either by `offset` or, faster deep into a long list, by `cursor`."""
    descending = sort.startswith("-")
    column = SORT_COLUMNS[sort.lstrip("-")]
    where = filters.conditions()
    total = session.scalar(select(func.count(Run.id)).where(*where)) or 0
    order = [column.desc().nulls_last(), Run.id.desc()] if descending else [column.asc().nulls_last(), Run.id.asc()]
    query = select(Run).where(*where).order_by(*order).limit(limit + 1)
    if cursor:
        value, run_id = _decode_cursor(cursor, sort)
        query = query.where(_after_cursor(column, descending, value, run_id))
    elif offset:
        query = query.offset(offset)
    runs = list(session.scalars(query))
    next_cursor = None
    if len(runs) > limit:
        runs = runs[:limit]
        last = runs[-1]
        next_cursor = _encode_cursor(sort, getattr(last, column.key), last.id)
    return runs, int(total), next_cursor


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


def update_run(session: Session, run_id: int, changes: Mapping[str, object]) -> Run:
    """Set the name, the note or the tags (the whole set) of a run."""
    run = get_run(session, run_id)
    if changes.get("name") is not None:
        run.name = str(changes["name"])
    if "note" in changes:
        run.note = changes["note"] or None
    if "tags" in changes:
        wanted = list(dict.fromkeys(changes["tags"] or []))
        kept = [row for row in run.tag_rows if row.tag in wanted]
        have = {row.tag for row in kept}
        run.tag_rows = kept + [RunTag(tag=tag) for tag in wanted if tag not in have]
    session.commit()
    session.refresh(run)
    return run


def run_artifact_dir(artifact_dir: Path, run_id: int) -> Path:
    """The folder of a run's files (its checkpoint): ARTIFACT_DIR/runs/<id>."""
    return artifact_dir / "runs" / str(run_id)


def remove_artifacts(artifact_dir: Path | None, run_ids: Iterable[int]) -> None:
    if artifact_dir is not None:
        for run_id in run_ids:
            shutil.rmtree(run_artifact_dir(artifact_dir, run_id), ignore_errors=True)


def retry_run(session: Session, run_id: int, queue: RunQueue, artifact_dir: Path | None = None) -> Run:
    """Queue a failed or cancelled run again under the same id (so its sweep sees the new
    result in the same cell), from scratch. Its old points and matrix are removed first:
    points are written insert-or-ignore per (run, epoch, name), so stale ones would shadow the
    new; and its files, since a worker resumes a run from the checkpoint it finds there."""
    run = get_run(session, run_id)
    if run.state not in (RunState.failed, RunState.cancelled):
        raise RunNotRetryable(f"run {run_id} is {run.state}; only failed or cancelled runs can be retried")
    session.execute(delete(MetricPoint).where(MetricPoint.run_id == run_id))
    session.execute(delete(ConfusionMatrix).where(ConfusionMatrix.run_id == run_id))
    session.expire(run, ["confusion"])
    run.state = RunState.queued
    run.cancel_requested = False
    run.started_at = run.finished_at = run.heartbeat_at = None
    run.worker = None
    run.epochs_completed = 0
    run.test_accuracy = run.val_accuracy = run.best_epoch = None
    run.info = run.error = run.error_detail = None
    session.commit()
    remove_artifacts(artifact_dir, [run_id])
    enqueue_committed(session, [run], queue)
    return run


def delete_runs(session: Session, run_ids: Iterable[int], artifact_dir: Path | None = None) -> int:
    """Delete runs with their points, matrices and tags (by the database's cascades) and their
    files. A worker still training one of them fails its next write and stops."""
    ids = list(run_ids)
    if not ids:
        return 0
    deleted = session.execute(delete(Run).where(Run.id.in_(ids))).rowcount
    session.commit()
    remove_artifacts(artifact_dir, ids)
    return int(deleted or 0)


def metrics_after(session: Session, run_id: int, after: int = 0, limit: int = 10_000) -> list[MetricPoint]:
    """Points recorded after the cursor `after` (a point id), in the order they landed."""
    query = (
        select(MetricPoint)
        .where(MetricPoint.run_id == run_id, MetricPoint.id > after)
        .order_by(MetricPoint.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def metrics_for_display(session: Session, run_id: int, max_points: int) -> tuple[list[MetricPoint], int, int]:
    """Every series of the run cut to about `max_points` points (extremes kept), the cursor of
    the newest point (a live stream appends from there), and how many points there were."""
    points = list(session.scalars(
        select(MetricPoint).where(MetricPoint.run_id == run_id).order_by(MetricPoint.name, MetricPoint.epoch)
    ))
    cursor = max((p.id for p in points), default=0)
    kept: list[MetricPoint] = []
    for _, series in groupby(points, key=lambda p: p.name):
        kept.extend(downsample_min_max(list(series), max_points, lambda p: p.value))
    return kept, cursor, len(points)


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
    (none when it was cancelled before its first epoch). A run deleted while it trained stays deleted."""
    run = session.get(Run, run_id)
    if run is None:
        return
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
