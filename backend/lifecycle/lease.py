"""What a worker holding a lease calls, for any leased kind: claim a row, keep it alive, write
progress, and end it (finish, fail, or give it back on shutdown).

Every write after the claim is conditional on `worker` still holding the row (state running,
worker = it): a worker that was taken for dead, whose row went to another worker, gets
LeaseLost and writes nothing more. With `worker=None` the write is unconditional (scripts,
benchmarks and tests that play the worker)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from ..db import utcnow
from .models import Leased, State, describe_holder


class LeaseLost(RuntimeError):
    """The worker no longer holds the row: it was taken for dead and the row was queued again
    or given to another worker (or the row was deleted). It must stop without writing anything."""


class ClaimOutcome(Enum):
    """What a claim did. Only `started` and `taken_from_dead_worker` hand the row to the worker."""

    started = "started"
    taken_from_dead_worker = "taken from a dead worker"
    no_such_row = "no such row"
    already_finished = "already finished"
    held_by_live_worker = "held by a live worker"
    taken_by_another_worker = "taken by another worker first"
    # The claim itself ended the row: its end is to be announced like any other.
    cancelled_while_queued = "cancelled while queued"
    failed_worker_died_too_often = "failed: its worker died too often"


ENDED_BY_THE_CLAIM = frozenset({ClaimOutcome.cancelled_while_queued, ClaimOutcome.failed_worker_died_too_often})


@dataclass
class Claim:
    row: Leased | None  # the run or job, now held by the claiming worker; None when it must not run here
    outcome: ClaimOutcome
    detail: str = ""  # the previous holder, the state it had already reached, the kind of row not found

    @property
    def ended_the_row(self) -> bool:
        return self.outcome in ENDED_BY_THE_CLAIM

    @property
    def reason(self) -> str:
        """For the log: what happened, in words."""
        match self.outcome:
            case ClaimOutcome.no_such_row:
                return f"no such {self.detail}"
            case ClaimOutcome.already_finished:
                return f"already {self.detail}"
            case ClaimOutcome.held_by_live_worker | ClaimOutcome.taken_from_dead_worker:
                return f"{self.outcome.value} ({self.detail})"
        return self.outcome.value


def claim(session: Session, model: type[Leased], row_id: int, worker: str, *, heartbeat_timeout: float | None = None,
          max_retries: int | None = None, holder_is_dead: Callable[[str], bool] | None = None) -> Claim:
    """Take the row for `worker`, or say why not. A delivery can be a duplicate (a redelivered
    message and a requeue of the same id, a run past the broker's visibility timeout), so a row
    is taken only if it is queued, or running on a worker known dead: its heartbeat older than
    `heartbeat_timeout`, or `holder_is_dead(holder)`. The change is one conditional UPDATE on
    the row as it was read, so two workers racing for the same row cannot both win."""
    row = session.get(model, row_id)
    if row is None:
        return Claim(None, ClaimOutcome.no_such_row, model.noun)
    if row.is_terminal:
        return Claim(None, ClaimOutcome.already_finished, str(row.state))
    now = utcnow()
    previous_holder = describe_holder(row)
    conditions = [model.id == row_id, model.state == row.state, model.attempts == row.attempts]
    taken_from_dead_worker = row.state == State.running
    if taken_from_dead_worker:
        if holder_is_dead is not None and row.worker and holder_is_dead(row.worker):
            conditions.append(model.worker == row.worker)
        elif heartbeat_timeout is not None and (row.heartbeat_at is None
                                                or row.heartbeat_at < now - timedelta(seconds=heartbeat_timeout)):
            conditions.append(or_(model.heartbeat_at < now - timedelta(seconds=heartbeat_timeout),
                                  model.heartbeat_at.is_(None)))
        else:
            return Claim(None, ClaimOutcome.held_by_live_worker, previous_holder)
    if row.cancel_requested:
        session.execute(update(model).where(*conditions).values(state=State.cancelled, finished_at=now))
        session.commit()
        return Claim(None, ClaimOutcome.cancelled_while_queued)
    losses = row.worker_losses + int(taken_from_dead_worker)
    if taken_from_dead_worker and max_retries is not None and losses > max_retries:
        session.execute(update(model).where(*conditions).values(
            state=State.failed, finished_at=now, worker_losses=losses,
            error=f"its worker died {losses} times ({previous_holder}); not started again after "
                  f"{max_retries} retries (RUN_MAX_RETRIES)"))
        session.commit()
        return Claim(None, ClaimOutcome.failed_worker_died_too_often)
    changed = session.execute(update(model).where(*conditions).values(
        state=State.running, started_at=row.started_at or now, heartbeat_at=now, worker=worker,
        attempts=model.attempts + 1, worker_losses=losses, awaiting_broker_since=None, error=None, error_detail=None,
    ))
    session.commit()
    if changed.rowcount != 1:
        return Claim(None, ClaimOutcome.taken_by_another_worker)
    session.refresh(row)
    if taken_from_dead_worker:
        return Claim(row, ClaimOutcome.taken_from_dead_worker, previous_holder)
    return Claim(row, ClaimOutcome.started)


def hold(session: Session, model: type[Leased], row_id: int, worker: str | None, **values) -> bool | None:
    """Refresh the heartbeat (and set `values`) only while `worker` holds the row, raising
    LeaseLost otherwise; returns the row's cancel flag, read by the same statement (None: no
    worker was named and the row is gone). Does not commit: the caller adds its own writes to
    the transaction. On PostgreSQL the UPDATE also locks the row until the commit, so a
    concurrent claim sees this heartbeat, not the stale one."""
    conditions = [model.id == row_id]
    if worker is not None:
        conditions += [model.state == State.running, model.worker == worker]
    statement = update(model).where(*conditions).values(heartbeat_at=utcnow(), **values).returning(
        model.cancel_requested)
    cancel = session.connection().execute(statement).scalar_one_or_none()
    if cancel is None and worker is not None:
        session.rollback()
        raise LeaseLost(f"{model.noun} {row_id} is no longer held by {worker}")
    return cancel


def record(session: Session, model: type[Leased], row_id: int, worker: str | None, **values) -> bool:
    """Progress (`values`) and a heartbeat, committed; returns whether a cancel was requested."""
    cancel = hold(session, model, row_id, worker, **values)
    session.commit()
    return bool(cancel)


def beat(session: Session, model: type[Leased], row_id: int, worker: str | None = None) -> bool:
    """Mark the row alive; False when `worker` no longer holds it."""
    conditions = [model.id == row_id, model.state == State.running]
    if worker is not None:
        conditions.append(model.worker == worker)
    changed = session.execute(update(model).where(*conditions).values(heartbeat_at=utcnow()))
    session.commit()
    return changed.rowcount == 1


def release(session: Session, model: type[Leased], row_id: int, worker: str) -> bool:
    """The worker is shutting down and gives the row back: `queued` again, to resume elsewhere
    (its id is sent by the worker's shutdown or the reconcile step). Not a worker loss. False
    when it no longer held the row."""
    changed = session.execute(update(model).where(model.id == row_id, model.state == State.running,
                                                  model.worker == worker)
                              .values(state=State.queued, worker=None, awaiting_broker_since=utcnow()))
    session.commit()
    return changed.rowcount == 1


def finish(session: Session, model: type[Leased], row_id: int, worker: str | None, *, cancelled: bool,
           rows: Iterable[object] = (), **values) -> None:
    """End the row as succeeded (or cancelled, keeping what it did), with its result `values`
    and any other `rows` (a run's confusion matrix) in the same transaction. A row deleted
    while it ran stays deleted."""
    held = hold(session, model, row_id, worker, state=State.cancelled if cancelled else State.succeeded,
                finished_at=utcnow(), **values)
    if held is None:
        session.rollback()
        return
    for row in rows:
        session.merge(row)
    session.commit()


def fail(session: Session, model: type[Leased], row_id: int, error: str, detail: str | None = None,
         worker: str | None = None) -> None:
    """End the row as failed, unless `worker` no longer holds it (then it is someone else's)."""
    session.rollback()
    conditions = [model.id == row_id]
    if worker is not None:
        conditions += [model.state == State.running, model.worker == worker]
    session.execute(update(model).where(*conditions).values(state=State.failed, finished_at=utcnow(),
                                                            error=error, error_detail=detail))
    session.commit()
