"""Run life cycle as plain functions over a session: the API creates, lists and cancels;
the worker starts, records epochs and finishes. Every SQL statement about runs lives here."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..db import utcnow
from ..queue import RunQueue
from .models import ConfusionMatrix, MetricPoint, Run, RunState
from .schemas import RunCreate

log = logging.getLogger("missmod.runs")


class RunNotFound(LookupError):
    pass


class RunFinished(RuntimeError):
    """The run is already in a terminal state."""


class BrokerUnavailable(RuntimeError):
    """The run was saved but its id could not be sent to the broker."""


class LeaseLost(RuntimeError):
    """The worker no longer holds the run: it was taken for dead and the run was queued again or
    given to another worker. It must stop without writing anything more for the run."""


def default_run_name(spec: RunCreate) -> str:
    return f"{spec.method}-{spec.fusion} {spec.dataset} {spec.missing_modality}@{spec.missing_rate:g} s{spec.seed}"


def create_run(session: Session, payload: RunCreate, queue: RunQueue) -> Run:
    """Commit the run, then send its id: a worker never sees an id that is not in the
    database. If the broker cannot be reached the run is marked failed, not left queued; if
    this process dies between the commit and the send, the reconcile step sends it."""
    now = utcnow()
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
        created_at=now,
        awaiting_broker_since=now,
    )
    session.add(run)
    session.commit()
    try:
        queue.enqueue(run.id)
    except Exception as error:  # the broker is down or misconfigured
        log.error("could not send run %s to the broker: %s", run.id, error)
        run.state = RunState.failed
        run.finished_at = utcnow()
        run.awaiting_broker_since = None
        run.error = f"could not send the run to the broker: {type(error).__name__}"
        session.commit()
        raise BrokerUnavailable(str(error)) from error
    _mark_sent(session, run.id)
    return run


def _mark_sent(session: Session, run_id: int) -> None:
    session.execute(update(Run).where(Run.id == run_id, Run.awaiting_broker_since.is_not(None))
                    .values(awaiting_broker_since=None))
    session.commit()


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


def send_awaiting(session: Session, queue: RunQueue, *, queued_before: datetime,
                  also: frozenset[int] = frozenset()) -> list[int]:
    """Send the ids of queued runs whose id may not have reached the broker: queued before
    `queued_before` (a sender that was alive has long sent them), or listed in `also`. A
    duplicate message is harmless: a worker starts a run only once (see claim_run)."""
    query = select(Run.id).where(
        Run.state == RunState.queued, Run.awaiting_broker_since.is_not(None),
        or_(Run.awaiting_broker_since < queued_before, Run.id.in_(also)),
    ).order_by(Run.id)
    sent = []
    for run_id in session.scalars(query).all():
        try:
            queue.enqueue(run_id)
        except Exception as error:  # the broker is down: the next pass tries again
            log.warning("could not send run %s to the broker (will retry): %s", run_id, error)
            break
        _mark_sent(session, run_id)
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


def _hold(session: Session, run_id: int, worker: str | None, **values) -> None:
    """Refresh the heartbeat (and set `values`) only while `worker` holds the run; raise
    LeaseLost otherwise. On PostgreSQL the UPDATE also locks the row until the commit, so a
    concurrent claim sees this heartbeat, not the stale one."""
    conditions = [Run.id == run_id]
    if worker is not None:
        conditions += [Run.state == RunState.running, Run.worker == worker]
    changed = session.execute(update(Run).where(*conditions).values(heartbeat_at=utcnow(), **values))
    if worker is not None and changed.rowcount != 1:
        session.rollback()
        raise LeaseLost(f"run {run_id} is no longer held by {worker}")


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


def record_points(session: Session, run_id: int, epoch: int, metrics: Mapping[str, float],
                  worker: str | None = None, **run_values) -> bool:
    """Write points (idempotently) and a heartbeat in one transaction; returns whether a
    cancel was requested. With `worker`, only while that worker holds the run (LeaseLost)."""
    _hold(session, run_id, worker, **run_values)
    now = utcnow()
    rows = [{"run_id": run_id, "epoch": epoch, "name": name, "value": _finite_or_none(value), "recorded_at": now}
            for name, value in metrics.items()]
    if rows:
        insert = _insert_ignoring_duplicates(session)
        session.execute(insert.values(rows).on_conflict_do_nothing(index_elements=["run_id", "epoch", "name"]))
    cancel = session.scalar(select(Run.cancel_requested).where(Run.id == run_id))
    session.commit()
    return bool(cancel)


def record_epoch(session: Session, run_id: int, epoch: int, metrics: Mapping[str, float],
                 worker: str | None = None) -> bool:
    """One finished epoch: its points, the progress and a heartbeat, committed together.
    Returns whether a cancel was requested."""
    return record_points(session, run_id, epoch, metrics, worker, epochs_completed=epoch)


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
    _hold(session, run_id, worker, state=RunState.cancelled if cancelled else RunState.succeeded,
          finished_at=utcnow(), test_accuracy=test_accuracy, val_accuracy=val_accuracy, best_epoch=best_epoch,
          info=dict(info))
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
