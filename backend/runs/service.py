"""Run life cycle as plain functions over a session: the API creates, lists, cancels, retries
and deletes; the worker claims, records epochs and finishes; the reconcile step recovers runs
whose worker died. Every SQL statement about runs lives here."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import groupby

from sqlalchemy import ColumnElement, Row, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..db import utcnow
from ..queue import RunQueue
from .artifacts import remove_run_files, run_artifact_dir  # noqa: F401  (run_artifact_dir: for callers)
from .downsample import downsample_min_max
from .models import ConfusionMatrix, MetricPoint, Run, RunState, RunTag
from .schemas import RunCreate

log = logging.getLogger("missmod.runs")


class RunNotFound(LookupError):
    pass


class RunFinished(RuntimeError):
    """The run is already in a terminal state."""


class RunNotRetryable(RuntimeError):
    """Only a failed or cancelled run can be retried."""


class InvalidCursor(ValueError):
    """A `cursor` that this server did not hand out for this sort order."""


class BrokerUnavailable(RuntimeError):
    """The run was saved but its id could not be sent to the broker. No longer raised at submit:
    such a run stays queued, awaiting the broker (enqueue_committed); kept for callers that catch it."""


class LeaseLost(RuntimeError):
    """The worker no longer holds the run: it was taken for dead and the run was queued again or
    given to another worker (or the run was deleted). It must stop without writing anything more."""


def default_run_name(spec: RunCreate) -> str:
    return f"{spec.method}-{spec.fusion} {spec.dataset} {spec.missing_modality}@{spec.missing_rate:g} s{spec.seed}"


def new_run(payload: RunCreate, sweep_id: int | None = None, idempotency_key: str | None = None) -> Run:
    """The row of a validated spec, not yet added to a session. It counts as awaiting the
    broker until its id is sent: if the sender dies in between, the reconcile step sends it."""
    now = utcnow()
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
        created_at=now,
        awaiting_broker_since=now,
        sweep_id=sweep_id,
        idempotency_key=idempotency_key,
    )


def _mark_sent(session: Session, run_ids: Sequence[int]) -> None:
    if run_ids:
        session.execute(update(Run).where(Run.id.in_(list(run_ids)), Run.awaiting_broker_since.is_not(None))
                        .values(awaiting_broker_since=None, broker_error=None))
        session.commit()


def broker_failure(error: Exception) -> str:
    # What the page shows; the broker's own message can carry its address (kept in the log).
    return f"the broker could not be reached ({type(error).__name__})"


def enqueue_committed(session: Session, runs: Sequence[Run], queue: RunQueue) -> bool:
    """Send the ids of runs already committed, in order; True when all were sent. If the broker
    cannot be reached, the runs not sent stay queued, marked awaiting the broker with the reason
    (the outbox): nothing is lost or failed, and the reconcile step sends them once it is back."""
    sent: list[int] = []
    for index, run in enumerate(runs):
        try:
            queue.enqueue(run.id)
        except Exception as error:  # the broker is down or misconfigured
            log.error("could not send run %s to the broker (%d runs wait for it): %s", run.id, len(runs) - index,
                      error)
            _mark_sent(session, sent)
            unsent = [r.id for r in runs[index:]]
            session.execute(update(Run).where(Run.id.in_(unsent), Run.state == RunState.queued)
                            .values(broker_error=broker_failure(error)))
            session.commit()
            for r in runs:
                session.refresh(r)
            return False
        sent.append(run.id)
    _mark_sent(session, sent)
    for run in runs:
        session.refresh(run)
    return True


def create_run(session: Session, payload: RunCreate, queue: RunQueue, idempotency_key: str | None = None) -> Run:
    """Commit the run, then send its id: a worker never sees an id that is not in the
    database. If the broker cannot be reached the run stays queued, awaiting the broker
    (`run.awaiting_broker`). A key already taken raises IntegrityError (see api/idempotency.py)."""
    run = new_run(payload, idempotency_key=idempotency_key)
    session.add(run)
    session.commit()
    enqueue_committed(session, [run], queue)
    return run


def run_by_idempotency_key(session: Session, key: str) -> Run | None:
    return session.scalar(select(Run).where(Run.idempotency_key == key))


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


def remove_artifacts(artifact_store, run_ids: Iterable[int]) -> None:
    """The runs' files in the artifact store (a Settings, a store, or a local folder)."""
    remove_run_files(artifact_store, run_ids)


def retry_run(session: Session, run_id: int, queue: RunQueue, artifact_dir=None) -> Run:
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
    run.worker_losses = 0
    run.awaiting_broker_since = utcnow()
    run.broker_error = None
    # Starts over: no checkpoint of an attempt so far is resumed from, even one whose file survived.
    run.resume_after_attempt = run.attempts
    run.epochs_completed = 0
    run.test_accuracy = run.val_accuracy = run.best_epoch = None
    run.info = run.error = run.error_detail = None
    session.commit()
    remove_artifacts(artifact_dir, [run_id])
    enqueue_committed(session, [run], queue)
    return run


def delete_runs(session: Session, run_ids: Iterable[int], artifact_dir=None) -> int:
    """Delete runs with their points, matrices and tags (by the database's cascades) and their
    files. A worker still training one of them fails its next write and stops."""
    ids = list(run_ids)
    if not ids:
        return 0
    deleted = session.execute(delete(Run).where(Run.id.in_(ids))).rowcount
    session.commit()
    remove_artifacts(artifact_dir, ids)
    return int(deleted or 0)


# Points are read as plain rows, not ORM objects: a long run has tens of thousands, and
# building an object per point was most of the time of a metrics request.
POINT_COLUMNS = (MetricPoint.id, MetricPoint.epoch, MetricPoint.name, MetricPoint.value)


def metrics_after(session: Session, run_id: int, after: int = 0, limit: int = 10_000) -> list[Row]:
    """Points (id, epoch, name, value) recorded after the cursor `after` (a point id), in the
    order they landed."""
    query = (
        select(*POINT_COLUMNS)
        .where(MetricPoint.run_id == run_id, MetricPoint.id > after)
        .order_by(MetricPoint.id)
        .limit(limit)
    )
    # Through the connection, not the ORM session: a plain Core query needs none of the ORM's
    # row handling, which took half of a long run's metrics request (bench/api_views.py).
    return session.connection().execute(query).all()


def metrics_for_display(session: Session, run_id: int, max_points: int) -> tuple[list[Row], int, int]:
    """Every series of the run cut to about `max_points` points (extremes kept), the cursor of
    the newest point (a live stream appends from there), and how many points there were."""
    points = session.connection().execute(
        select(*POINT_COLUMNS).where(MetricPoint.run_id == run_id).order_by(MetricPoint.name, MetricPoint.epoch)
    ).all()
    cursor = max((p.id for p in points), default=0)
    kept: list[Row] = []
    for _, series in groupby(points, key=lambda p: p.name):
        kept.extend(downsample_min_max(list(series), max_points, lambda p: p.value))
    return kept, cursor, len(points)


def confusion_of(session: Session, run_id: int) -> ConfusionMatrix | None:
    return session.get(ConfusionMatrix, run_id)


def send_awaiting(session: Session, queue: RunQueue, *, queued_before: datetime,
                  also: frozenset[int] = frozenset()) -> list[int]:
    """Send the ids of queued runs whose id may not have reached the broker: queued before
    `queued_before` (a sender that was alive has long sent them), or listed in `also`. A
    duplicate message is harmless: a worker starts a run only once (see claim_run)."""
    query = select(Run.id).where(
        Run.state == RunState.queued, Run.awaiting_broker_since.is_not(None),
        # broker_error: its sender found the broker down; nobody else is about to send it.
        or_(Run.awaiting_broker_since < queued_before, Run.broker_error.is_not(None), Run.id.in_(also)),
    ).order_by(Run.id)
    sent = []
    for run_id in session.scalars(query).all():
        try:
            queue.enqueue(run_id)
        except Exception as error:  # the broker is down: the next pass tries again
            log.warning("could not send run %s to the broker (will retry): %s", run_id, error)
            session.execute(update(Run).where(Run.id == run_id, Run.state == RunState.queued)
                            .values(broker_error=broker_failure(error)))
            session.commit()
            break
        _mark_sent(session, [run_id])
        sent.append(run_id)
    return sent


def requeue_interrupted(session: Session, worker_prefix: str, queue: RunQueue) -> list[int]:
    """Runs left `running` by workers whose name starts with `worker_prefix` (stopped while
    training) go back to `queued` and are sent again, so stopping the local stack loses no run.
    Not counted as a worker loss: the stack was stopped on purpose."""
    now = utcnow()
    ids = list(session.scalars(select(Run.id).where(Run.state == RunState.running,
                                                    Run.worker.startswith(worker_prefix))))
    if ids:
        session.execute(update(Run).where(Run.id.in_(ids), Run.state == RunState.running)
                        .values(state=RunState.queued, worker=None, awaiting_broker_since=now))
        session.commit()
    send_awaiting(session, queue, queued_before=now, also=frozenset(ids))
    return ids


@dataclass
class ReconcileReport:
    requeued: list[int] = field(default_factory=list)  # worker died: queued again
    failed: list[int] = field(default_factory=list)  # worker died once too often
    cancelled: list[int] = field(default_factory=list)  # worker died after a cancel was asked
    sent: list[int] = field(default_factory=list)  # ids (re)sent to the broker

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed or self.cancelled or self.sent)


def _describe_holder(run: Run) -> str:
    when = run.heartbeat_at.strftime("%Y-%m-%d %H:%M:%S UTC") if run.heartbeat_at else "never"
    return f"worker {run.worker or '?'}, last heartbeat {when}"


def reconcile(session: Session, queue: RunQueue, *, heartbeat_timeout: float, max_retries: int,
              now: datetime | None = None) -> ReconcileReport:
    """The database is the source of truth: a run `running` whose heartbeat stopped has no live
    worker (killed, host lost, broker unable to redeliver). Queue it again (it resumes from its
    checkpoint), or fail it once its worker has died more than `max_retries` times; then send
    the ids of queued runs that may never have reached the broker. Safe to run from several
    processes at once: every change is conditional on the row still being as it was read."""
    now = now or utcnow()
    stale_before = now - timedelta(seconds=heartbeat_timeout)
    is_stale = or_(Run.heartbeat_at < stale_before, Run.heartbeat_at.is_(None))
    report = ReconcileReport()
    for run in session.scalars(select(Run).where(Run.state == RunState.running, is_stale)).all():
        holder = _describe_holder(run)
        if run.cancel_requested:
            values, bucket, outcome = {"state": RunState.cancelled, "finished_at": now}, report.cancelled, "cancelled"
        elif run.worker_losses >= max_retries:
            values, bucket, outcome = {
                "state": RunState.failed, "finished_at": now, "worker_losses": Run.worker_losses + 1,
                "error": f"its worker stopped responding {run.worker_losses + 1} times ({holder}); not queued again "
                         f"after {max_retries} retries (RUN_MAX_RETRIES): the run may be killing its worker, "
                         "e.g. by running out of memory",
            }, report.failed, "failed"
        else:
            values, bucket, outcome = {"state": RunState.queued, "worker": None, "worker_losses": Run.worker_losses + 1,
                                       "awaiting_broker_since": now}, report.requeued, "queued again"
        changed = session.execute(update(Run).where(Run.id == run.id, Run.state == RunState.running,
                                                    Run.attempts == run.attempts, is_stale).values(**values))
        if changed.rowcount == 1:
            log.warning("run %s: no heartbeat for %.0f s (%s): %s", run.id, heartbeat_timeout, holder, outcome)
            bucket.append(run.id)
    session.commit()
    report.sent = send_awaiting(session, queue, queued_before=stale_before, also=frozenset(report.requeued))
    return report


# --- the worker's side ---------------------------------------------------------------


@dataclass
class Claim:
    run: Run | None  # the run, now held by the claiming worker; None when it must not run here
    reason: str


def claim_run(session: Session, run_id: int, worker: str, *, heartbeat_timeout: float | None = None,
              max_retries: int | None = None, holder_is_dead: Callable[[str], bool] | None = None) -> Claim:
    """Take the run for `worker`, or say why not. A delivery can be a duplicate (a redelivered
    message and a requeue of the same run, an over-long run past the broker's visibility timeout),
    so a run is taken only if it is queued, or running on a worker known dead: its heartbeat
    older than `heartbeat_timeout`, or `holder_is_dead(holder)`. The change is one conditional
    UPDATE, so two workers racing for the same run cannot both win."""
    run = session.get(Run, run_id)
    if run is None:
        return Claim(None, "no such run")
    if run.is_terminal:
        return Claim(None, f"already {run.state}")
    now = utcnow()
    previous_holder = _describe_holder(run)
    conditions = [Run.id == run_id, Run.state == run.state, Run.attempts == run.attempts]
    taken_from_dead_worker = run.state == RunState.running
    if taken_from_dead_worker:
        if holder_is_dead is not None and run.worker and holder_is_dead(run.worker):
            conditions.append(Run.worker == run.worker)
        elif heartbeat_timeout is not None and (run.heartbeat_at is None
                                                or run.heartbeat_at < now - timedelta(seconds=heartbeat_timeout)):
            conditions.append(or_(Run.heartbeat_at < now - timedelta(seconds=heartbeat_timeout),
                                  Run.heartbeat_at.is_(None)))
        else:
            return Claim(None, f"held by a live worker ({previous_holder})")
    if run.cancel_requested:
        session.execute(update(Run).where(*conditions).values(state=RunState.cancelled, finished_at=now))
        session.commit()
        return Claim(None, "cancelled while queued")
    losses = run.worker_losses + int(taken_from_dead_worker)
    if taken_from_dead_worker and max_retries is not None and losses > max_retries:
        session.execute(update(Run).where(*conditions).values(
            state=RunState.failed, finished_at=now, worker_losses=losses,
            error=f"its worker died {losses} times ({previous_holder}); not started again after "
                  f"{max_retries} retries (RUN_MAX_RETRIES)"))
        session.commit()
        return Claim(None, "failed: its worker died too often")
    changed = session.execute(update(Run).where(*conditions).values(
        state=RunState.running, started_at=run.started_at or now, heartbeat_at=now, worker=worker,
        attempts=Run.attempts + 1, worker_losses=losses, awaiting_broker_since=None, error=None, error_detail=None,
    ))
    session.commit()
    if changed.rowcount != 1:
        return Claim(None, "taken by another worker first")
    session.refresh(run)
    return Claim(run, f"taken from a dead worker ({previous_holder})" if taken_from_dead_worker else "started")


def start_run(session: Session, run_id: int, worker: str, **claim_options) -> Run | None:
    """The run, now running on `worker`; None when it must not run (see claim_run)."""
    return claim_run(session, run_id, worker, **claim_options).run


def _hold(session: Session, run_id: int, worker: str | None, **values) -> bool | None:
    """Refresh the heartbeat (and set `values`) only while `worker` holds the run, raising
    LeaseLost otherwise; returns the run's cancel flag, read by the same statement (None: no
    worker was named and the run is gone). On PostgreSQL the UPDATE also locks the row until
    the commit, so a concurrent claim sees this heartbeat, not the stale one."""
    conditions = [Run.id == run_id]
    if worker is not None:
        conditions += [Run.state == RunState.running, Run.worker == worker]
    statement = update(Run).where(*conditions).values(heartbeat_at=utcnow(), **values).returning(Run.cancel_requested)
    cancel = session.connection().execute(statement).scalar_one_or_none()
    if cancel is None and worker is not None:
        session.rollback()
        raise LeaseLost(f"run {run_id} is no longer held by {worker}")
    return cancel


# Metric points are written with one cached statement per dialect, executed for many rows:
# the worker's write path is hot (every epoch of every run), and building a new multi-row
# INSERT each time cost more than the database did.
_POINT_INSERTS = {
    name: dialect.insert(MetricPoint).on_conflict_do_nothing(index_elements=["run_id", "epoch", "name"])
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def record_points(session: Session, run_id: int, epoch: int, metrics: Mapping[str, float],
                  worker: str | None = None, **run_values) -> bool:
    """Write points (idempotently) and a heartbeat in one transaction; returns whether a
    cancel was requested. With `worker`, only while that worker holds the run (LeaseLost)."""
    cancel = _hold(session, run_id, worker, **run_values)
    now = utcnow()
    rows = [{"run_id": run_id, "epoch": epoch, "name": name, "value": _finite_or_none(value), "recorded_at": now}
            for name, value in metrics.items()]
    if rows:
        connection = session.connection()
        insert = _POINT_INSERTS.get(connection.dialect.name)
        if insert is None:
            raise NotImplementedError(f"metric points need an insert-or-ignore for {connection.dialect.name}")
        connection.execute(insert, rows)
    session.commit()
    return bool(cancel)


def record_epoch(session: Session, run_id: int, epoch: int, metrics: Mapping[str, float],
                 worker: str | None = None) -> bool:
    """One finished epoch: its points, the progress and a heartbeat, committed together.
    Returns whether a cancel was requested."""
    return record_points(session, run_id, epoch, metrics, worker, epochs_completed=epoch)


def record_stage(session: Session, run_id: int, progress: Mapping, worker: str | None = None) -> bool:
    """A stage before training (preprocessing) in run.info, with a heartbeat; returns whether
    a cancel was requested."""
    cancel = _hold(session, run_id, worker, info=dict(progress))
    session.commit()
    return bool(cancel)


def record_info(session: Session, run_id: int, info: Mapping, worker: str | None = None) -> None:
    _hold(session, run_id, worker, info=dict(info))
    session.commit()


def beat(session: Session, run_id: int, worker: str | None = None) -> bool:
    """Mark the run alive; False when `worker` no longer holds it."""
    conditions = [Run.id == run_id, Run.state == RunState.running]
    if worker is not None:
        conditions.append(Run.worker == worker)
    changed = session.execute(update(Run).where(*conditions).values(heartbeat_at=utcnow()))
    session.commit()
    return changed.rowcount == 1


def release_run(session: Session, run_id: int, worker: str) -> bool:
    """The worker is shutting down and gives the run back: `queued` again, to resume from its
    checkpoint elsewhere. Not a worker loss. False when it no longer held the run."""
    changed = session.execute(update(Run).where(Run.id == run_id, Run.state == RunState.running,
                                                Run.worker == worker)
                              .values(state=RunState.queued, worker=None, awaiting_broker_since=utcnow()))
    session.commit()
    return changed.rowcount == 1


def finish_run(session: Session, run_id: int, *, cancelled: bool, test_accuracy: float | None,
               val_accuracy: float | None, best_epoch: int | None, classes: list[str],
               confusion: list[list[int]] | None, info: Mapping, worker: str | None = None) -> None:
    """Store the final result. A cancelled run keeps its metrics and its best epoch so far
    (none when it was cancelled before its first epoch)."""
    held = _hold(session, run_id, worker, state=RunState.cancelled if cancelled else RunState.succeeded,
                 finished_at=utcnow(), test_accuracy=test_accuracy, val_accuracy=val_accuracy,
                 best_epoch=best_epoch, info=dict(info))
    if held is None:  # deleted while it trained: it stays deleted
        session.rollback()
        return
    if confusion is not None and best_epoch is not None:
        session.merge(ConfusionMatrix(run_id=run_id, epoch=best_epoch, classes=list(classes), counts=confusion))
    session.commit()


def fail_run(session: Session, run_id: int, error: str, detail: str | None = None, worker: str | None = None) -> None:
    session.rollback()
    conditions = [Run.id == run_id]
    if worker is not None:
        conditions += [Run.state == RunState.running, Run.worker == worker]
    session.execute(update(Run).where(*conditions).values(state=RunState.failed, finished_at=utcnow(),
                                                          error=error, error_detail=detail))
    session.commit()
