"""What the API calls for any leased kind: send the ids of committed rows to the broker (an
outbox: a row counts as awaiting the broker until its id is sent), and cancel."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import update
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session

from ..db import utcnow
from .models import Leased, State

log = logging.getLogger("missmod.lifecycle")

Send = Callable[[int], None]  # sends one id to the broker (WorkQueue.send_run, WorkQueue.send_job)

# What sending raises when the broker is down, unreachable or its folder unwritable: kombu's
# OperationalError (Redis refused or timed out, after Celery's retries), redis' own errors where
# they escape kombu, and OSError (a refused socket, a full or read-only broker folder). Anything
# else (a TypeError, a bad argument) is a bug and must surface, not be saved as "awaiting the broker".
BROKER_DOWN = (BrokerOperationalError, RedisConnectionError, RedisTimeoutError, OSError)


class AlreadyFinished(RuntimeError):
    """The run or job is already in a terminal state."""


def mark_sent(session: Session, model: type[Leased], ids: Sequence[int]) -> None:
    if ids:
        session.execute(update(model).where(model.id.in_(list(ids)), model.awaiting_broker_since.is_not(None))
                        .values(awaiting_broker_since=None, broker_error=None))
        session.commit()


def broker_failure(error: Exception) -> str:
    # What the page shows; the broker's own message can carry its address (kept in the log).
    return f"the broker could not be reached ({type(error).__name__})"


def mark_unsent(session: Session, model: type[Leased], ids: Sequence[int], error: Exception) -> None:
    """Rows whose id could not be sent stay queued, marked with why: the reconcile step sends
    them at its next pass (reconcile.send_awaiting), and the page says they wait for the broker."""
    if ids:
        session.execute(update(model).where(model.id.in_(list(ids)), model.state == State.queued)
                        .values(broker_error=broker_failure(error)))
        session.commit()


def enqueue_committed(session: Session, model: type[Leased], rows: Sequence[Leased], send: Send) -> bool:
    """Send the ids of rows already committed (queued, awaiting the broker), in order; True when
    all were sent. If the broker cannot be reached, the rows not sent stay queued and are marked
    awaiting the broker (the outbox): nothing is lost or failed, and the reconcile step sends
    them once it is back."""
    sent: list[int] = []
    for index, row in enumerate(rows):
        try:
            send(row.id)
        except BROKER_DOWN as error:
            log.error("could not send %s %s to the broker (%d wait for it): %s", model.noun, row.id,
                      len(rows) - index, error)
            mark_sent(session, model, sent)
            mark_unsent(session, model, [r.id for r in rows[index:]], error)
            _refresh(session, rows)
            return False
        sent.append(row.id)
    mark_sent(session, model, sent)
    _refresh(session, rows)
    return True


def _refresh(session: Session, rows: Sequence[Leased]) -> None:
    for row in rows:
        try:
            session.refresh(row)
        except InvalidRequestError:  # deleted meanwhile (a delete racing a retry): nothing left to read
            pass


def fresh_queue_values() -> dict[str, object]:
    """The life-cycle columns of a new row, awaiting the broker: what a retry sets (attempts keep
    counting). For an UPDATE that changes the state only where it still is what was read."""
    return {"state": State.queued, "cancel_requested": False, "started_at": None, "finished_at": None,
            "heartbeat_at": None, "worker": None, "worker_losses": 0, "awaiting_broker_since": utcnow(),
            "broker_error": None, "error": None, "error_detail": None}


def queue_again_from_scratch(row: Leased) -> None:
    """Reset the life-cycle columns of an ended row to those of a new one, awaiting the broker
    (a retry; attempts keep counting). The caller resets its own result columns and commits."""
    for column, value in fresh_queue_values().items():
        setattr(row, column, value)


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
