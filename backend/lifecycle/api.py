"""What the API calls for any leased kind: send the ids of committed rows to the broker (an
outbox: a row counts as awaiting the broker until its id is sent), and cancel."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sqlalchemy import update
from sqlalchemy.orm import Session

from ..db import utcnow
from .models import Leased, State

log = logging.getLogger("missmod.lifecycle")

Send = Callable[[int], None]  # sends one id to the broker (RunQueue.enqueue, RunQueue.enqueue_job)


class BrokerUnavailable(RuntimeError):
    """The row was saved but its id could not be sent to the broker."""

    # What the API tells the client (backend/api/errors.py); the broker's own message, which can
    # carry its address, goes to the server log only.
    public_message = "the broker is unreachable: the run was saved as failed; try again shortly"


class AlreadyFinished(RuntimeError):
    """The run or job is already in a terminal state."""


def mark_sent(session: Session, model: type[Leased], ids: Sequence[int]) -> None:
    if ids:
        session.execute(update(model).where(model.id.in_(list(ids)), model.awaiting_broker_since.is_not(None))
                        .values(awaiting_broker_since=None))
        session.commit()


def enqueue_committed(session: Session, model: type[Leased], rows: Sequence[Leased], send: Send) -> None:
    """Send the ids of rows already committed (queued, awaiting the broker), in order. If the
    broker cannot be reached, the rows not sent are marked failed (not left queued forever) and
    BrokerUnavailable is raised."""
    sent: list[int] = []
    for index, row in enumerate(rows):
        try:
            send(row.id)
        except Exception as error:  # the broker is down or misconfigured
            log.error("could not send %s %s to the broker: %s", model.noun, row.id, error)
            mark_sent(session, model, sent)
            unsent = [r.id for r in rows[index:]]
            session.execute(
                update(model).where(model.id.in_(unsent), model.state == State.queued)
                .values(state=State.failed, finished_at=utcnow(), awaiting_broker_since=None,
                        error=f"could not send the {model.noun} to the broker: {type(error).__name__}")
            )
            session.commit()
            for r in rows[index:]:
                session.refresh(r)
            raise BrokerUnavailable(str(error)) from error
        sent.append(row.id)
    mark_sent(session, model, sent)
    for row in rows:
        session.refresh(row)


def queue_again_from_scratch(row: Leased) -> None:
    """Reset the life-cycle columns of an ended row to those of a new one, awaiting the broker
    (a retry; attempts keep counting). The caller resets its own result columns and commits."""
    row.state = State.queued
    row.cancel_requested = False
    row.started_at = row.finished_at = row.heartbeat_at = None
    row.worker = None
    row.worker_losses = 0
    row.awaiting_broker_since = utcnow()
    row.error = row.error_detail = None


def request_cancel(session: Session, row: Leased) -> Leased:
    """A queued row is cancelled at once; a running one is flagged, and its worker stops at its
    next write (the end of an epoch, the next clip), keeping what it finished."""
    if row.is_terminal:
        raise AlreadyFinished(f"{row.noun} {row.id} is already {row.state}")
    row.cancel_requested = True
    if row.state == State.queued:
        row.state = State.cancelled
        row.finished_at = utcnow()
    session.commit()
    return row
