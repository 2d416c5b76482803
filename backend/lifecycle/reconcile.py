"""What the reconcile step does, for any leased kind: the database is the source of truth, so a
row `running` whose heartbeat stopped has no live worker (killed, host lost, broker unable to
redeliver). It is queued again once per dead worker, failed after too many, ended as cancelled
if a cancel was asked; and the ids that may never have reached the broker are sent. Safe to
run from several processes at once: every change is conditional on the row still being as it
was read."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from collections.abc import Sequence

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from ..db import utcnow
from .api import BROKER_DOWN, Send, mark_sent, mark_unsent
from .models import Leased, State, describe_holder

log = logging.getLogger("missmod.reconcile")


@dataclass
class ReconcileReport:
    requeued: list[int] = field(default_factory=list)  # worker died: queued again
    failed: list[int] = field(default_factory=list)  # worker died once too often
    cancelled: list[int] = field(default_factory=list)  # worker died after a cancel was asked
    sent: list[int] = field(default_factory=list)  # ids (re)sent to the broker

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed or self.cancelled or self.sent)


def send_awaiting(session: Session, model: type[Leased], send: Send, *, queued_before: datetime,
                  also: frozenset[int] = frozenset()) -> list[int]:
    """Send the ids of queued rows whose id may not have reached the broker: queued before
    `queued_before` (a sender that was alive has long sent them), or listed in `also`. A
    duplicate message is harmless: a worker starts a row only once (lease.claim)."""
    query = select(model.id).where(
        model.state == State.queued, model.awaiting_broker_since.is_not(None),
        # broker_error: its sender found the broker down; nobody else is about to send it.
        or_(model.awaiting_broker_since < queued_before, model.broker_error.is_not(None), model.id.in_(also)),
    ).order_by(model.id)
    sent = []
    for row_id in session.scalars(query).all():
        try:
            send(row_id)
        except BROKER_DOWN as error:  # the next pass tries again (anything else is a bug: raised)
            log.warning("could not send %s %s to the broker (will retry): %s", model.noun, row_id, error)
            mark_unsent(session, model, [row_id], error)
            break
        mark_sent(session, model, [row_id])
        sent.append(row_id)
    return sent


def reconcile(session: Session, model: type[Leased], send: Send, *, heartbeat_timeout: float, max_retries: int,
              now: datetime | None = None, where: Sequence[ColumnElement[bool]] = ()) -> ReconcileReport:
    """Queue again (to resume) each row whose heartbeat stopped, or fail it once its worker
    has died more than `max_retries` times; then send the ids that may not have reached the broker.
    `where`: only the rows that workers hold (a run a script logs live is not a worker's to retry)."""
    now = now or utcnow()
    stale_before = now - timedelta(seconds=heartbeat_timeout)
    is_stale = or_(model.heartbeat_at < stale_before, model.heartbeat_at.is_(None))
    report = ReconcileReport()
    for row in session.scalars(select(model).where(model.state == State.running, is_stale, *where)).all():
        holder = describe_holder(row)
        if row.cancel_requested:
            values, bucket, outcome = {"state": State.cancelled, "finished_at": now}, report.cancelled, "cancelled"
        elif row.worker_losses >= max_retries:
            values, bucket, outcome = {
                "state": State.failed, "finished_at": now, "worker_losses": model.worker_losses + 1,
                "error": f"its worker stopped responding {row.worker_losses + 1} times ({holder}); not queued again "
                         f"after {max_retries} retries (RUN_MAX_RETRIES): the {model.noun} may be killing its worker, "
                         "e.g. by running out of memory",
            }, report.failed, "failed"
        else:
            values, bucket, outcome = {"state": State.queued, "worker": None, "worker_losses": model.worker_losses + 1,
                                       "awaiting_broker_since": now}, report.requeued, "queued again"
        changed = session.execute(update(model).where(model.id == row.id, model.state == State.running,
                                                      model.attempts == row.attempts, is_stale).values(**values))
        if changed.rowcount == 1:
            log.warning("%s %s: no heartbeat for %.0f s (%s): %s", model.noun, row.id, heartbeat_timeout, holder,
                        outcome)
            bucket.append(row.id)
    session.commit()
    report.sent = send_awaiting(session, model, send, queued_before=stale_before, also=frozenset(report.requeued))
    return report


def running_on(session: Session, model: type[Leased], worker_prefix: str) -> list[int]:
    """The rows that workers whose name starts with `worker_prefix` hold running."""
    return list(session.scalars(select(model.id).where(model.state == State.running,
                                                       model.worker.startswith(worker_prefix))))


def queued_among(session: Session, model: type[Leased], ids: list[int]) -> list[int]:
    return list(session.scalars(select(model.id).where(model.id.in_(ids), model.state == State.queued)
                                .order_by(model.id))) if ids else []


def requeue_interrupted(session: Session, model: type[Leased], worker_prefix: str, send: Send) -> list[int]:
    """Rows left `running` by workers whose name starts with `worker_prefix` (stopped while
    working) go back to `queued` and are sent again, so stopping the local stack loses nothing.
    Not counted as a worker loss: the stack was stopped on purpose."""
    now = utcnow()
    ids = running_on(session, model, worker_prefix)
    if ids:
        session.execute(update(model).where(model.id.in_(ids), model.state == State.running)
                        .values(state=State.queued, worker=None, awaiting_broker_since=now))
        session.commit()
    send_awaiting(session, model, send, queued_before=now, also=frozenset(ids))
    return ids
