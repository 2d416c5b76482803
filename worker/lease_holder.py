"""How a worker executes anything it holds under a lease — a run (executor.py) or a dataset job
(dataset_jobs.py) — written once: claim the row, keep it alive with a heartbeat thread, write
progress (throttled, retried while the database is down) and pick up a cancel with each write,
then finish it, fail it, or give it back when the worker shuts down.

Every write is conditional on still holding the row (backend/lifecycle/lease.py): if this worker
was taken for dead (no heartbeat for HEARTBEAT_TIMEOUT) and the row went to another worker, its
next write raises LeaseLost and it stops without touching the row. The heartbeat finds it out too
(`LeaseHolder.lease_lost`), and the work then stops at once by raising LeaseLost itself.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from backend.db import session_factory
from backend.lifecycle import lease
from backend.lifecycle.lease import Claim, LeaseLost
from backend.lifecycle.models import Leased
from backend.settings import Settings

from training.train import StopReason

log = logging.getLogger("missmod.worker")

T = TypeVar("T")

# The database cannot be reached (down, restarting, network): transient, unlike a failing run.
DATABASE_ERRORS = (OperationalError, InterfaceError)


class DatabaseUnavailable(RuntimeError):
    """The run or job could not be claimed because the database is unreachable."""


def retry_while_database_down(action: Callable[[], T], patience: float) -> T:
    """Run `action`, retrying for up to `patience` seconds while the database is unreachable, so a
    database restart pauses the work at its next write instead of ending it."""
    deadline = time.monotonic() + patience
    pause = 0.5
    while True:
        try:
            return action()
        except DATABASE_ERRORS as error:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("database unreachable (%s); retrying in %.1f s", type(error).__name__, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def holder_is_dead_here(me: str) -> Callable[[str], bool]:
    """For a claim: whether a row's holder ("node/pid") is a process of this worker node that is
    gone. A node runs one task at a time, so a row it still holds while it receives that row's id
    again was held by a pool process that died (and whose id came back, reject-on-worker-lost);
    the row can resume at once instead of waiting for its heartbeat to go stale."""
    my_node, _, _ = me.rpartition("/")

    def is_dead(holder: str) -> bool:
        node, _, pid = holder.rpartition("/")
        if node != my_node or not pid.isdigit():
            return False
        if int(pid) == os.getpid():
            return True  # this very process, which is now between tasks
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    return is_dead


class LeaseHolder:
    """This worker's hold on one row: its writes (each a heartbeat too, and each reading the
    cancel flag), and whether the work should stop (a cancel, or this process shutting down)."""

    # Progress (clips preprocessed, segments encoded) is written at most this often, and at its end.
    PROGRESS_INTERVAL = 0.5

    def __init__(self, sessions: sessionmaker, model: type[Leased], row_id: int, worker: str | None = None,
                 stop_requested: Callable[[], bool] = lambda: False, database_patience: float = 0.0):
        self.sessions, self.model, self.row_id, self.worker = sessions, model, row_id, worker
        self.stop_requested = stop_requested
        self.database_patience = database_patience
        self.cancel_requested = False
        self.lease_lost = threading.Event()  # set by the heartbeat: the row is gone or another worker's
        self._progress_written_at = 0.0

    @property
    def name(self) -> str:
        return f"{self.model.noun} {self.row_id}"

    def write(self, action: Callable[[Session], T]) -> T:
        """`action(session)` in a fresh session, retried while the database is down."""
        def attempt() -> T:
            with self.sessions() as session:
                return action(session)

        return retry_while_database_down(attempt, self.database_patience)

    def write_and_check(self, action: Callable[[Session], bool]) -> None:
        """A write that returns the cancel flag (a heartbeat with progress): remembers it."""
        self.cancel_requested = bool(self.write(action))

    def record(self, **values) -> None:
        """Set `values` (progress) with a heartbeat."""
        self.write_and_check(lambda session: lease.record(session, self.model, self.row_id, self.worker, **values))

    def progress_due(self, done: int, total: int) -> bool:
        """Whether to write progress now: throttled, so a stream of small steps costs few writes."""
        now = time.monotonic()
        if done < total and now - self._progress_written_at < self.PROGRESS_INTERVAL:
            return False
        self._progress_written_at = now
        return True

    def should_stop(self) -> bool:
        return self.cancel_requested or self.stop_requested()

    def stop_reason(self) -> StopReason:
        """Why should_stop() said so: a cancel (the row ends cancelled) or a shutdown (given back)."""
        return StopReason.cancelled if self.cancel_requested else StopReason.shutdown

    def beat(self) -> bool:
        with self.sessions() as session:
            return lease.beat(session, self.model, self.row_id, self.worker)


class Heartbeat:
    """Marks the row alive every `interval` seconds from a thread, so a long epoch (or a long
    clip) still shows a live worker, and a dead one shows a stale heartbeat."""

    def __init__(self, holder: LeaseHolder, interval: float):
        self.holder, self.interval = holder, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{holder.row_id}", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self.holder.beat():
                    log.warning("%s is no longer held by %s (deleted, or taken for dead); it stops now",
                                self.holder.name, self.holder.worker)
                    self.holder.lease_lost.set()
                    return
            except Exception as error:  # a missed beat is not fatal; the next one may land
                log.warning("heartbeat of %s failed: %s", self.holder.name, error)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Outcome(StrEnum):
    """How one delivery of a row ended here."""

    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    queued_again = "queued again"  # given back on shutdown
    lease_lost = "lease lost"  # the row is gone or another worker's: nothing more written
    database_unreachable = "database unreachable"  # the reconcile step queues it again
    skipped = "skipped"  # not claimed (Executed.claim says why)


@dataclass(frozen=True)
class Executed:
    """What execute_leased did: the outcome, and the claim when the row was not taken."""

    outcome: Outcome
    claim: Claim | None = None

    @property
    def ended_the_row(self) -> bool:
        """The row reached its end through this delivery (its end is then announced): it finished,
        failed or was cancelled here, or the claim itself cancelled or failed it."""
        if self.outcome is Outcome.skipped:
            return self.claim is not None and self.claim.ended_the_row
        return self.outcome in (Outcome.succeeded, Outcome.failed, Outcome.cancelled)

    def __str__(self) -> str:
        if self.outcome is Outcome.skipped and self.claim is not None:
            return f"skipped: {self.claim.reason}"
        return self.outcome.value


@dataclass
class Done:
    stopped: StopReason  # why the work ended: finished (succeeded), cancelled, or shutdown (given back)
    # Writes the result under the lease: store(session, cancelled) (unused for a shutdown).
    store: Callable[[Session, bool], None]
    reached: str = ""  # how far it got, for the log ("after epoch 3")


def execute_leased(model: type[Leased], row_id: int, settings: Settings, work: Callable[[Leased, LeaseHolder], Done],
                   worker: str | None = None, stop_requested: Callable[[], bool] = lambda: False) -> Executed:
    """Claim the row for `worker` (Celery node name and pid; the host and pid by default), do
    `work(row, holder)` under a heartbeat, and end the row as the work says. Returns what
    happened (an Executed). The work raises LeaseLost when it finds the row no longer its own. Raises DatabaseUnavailable when the row could not
    even be claimed (the task then gives its id back to the broker)."""
    worker = worker or f"{socket.gethostname()}/{os.getpid()}"
    name = f"{model.noun} {row_id}"
    sessions = session_factory(settings.database_url)
    try:
        with sessions() as session:
            claim = lease.claim(session, model, row_id, worker, heartbeat_timeout=settings.heartbeat_timeout,
                                max_retries=settings.run_max_retries, holder_is_dead=holder_is_dead_here(worker))
    except DATABASE_ERRORS as error:
        raise DatabaseUnavailable(f"{type(error).__name__}: {error.orig if hasattr(error, 'orig') else error}") from None
    if claim.row is None:
        log.info("%s not started here: %s", name, claim.reason)
        return Executed(Outcome.skipped, claim)

    log.info("%s %s on %s", name, claim.reason, worker)
    holder = LeaseHolder(sessions, model, row_id, worker, stop_requested, database_patience=settings.heartbeat_timeout)
    try:
        with Heartbeat(holder, settings.heartbeat_interval):
            done = work(claim.row, holder)
    except LeaseLost:
        # A write found the row no longer this worker's (with per-step points written every half
        # second, this usually comes before the heartbeat notices).
        log.warning("%s is no longer held by %s (deleted, or given to another worker while this one was taken "
                    "for dead): stopped mid-epoch without writing", name, worker)
        return Executed(Outcome.lease_lost)
    except DATABASE_ERRORS as error:
        # Its heartbeat stops with it: the reconcile step queues it again once the database is back.
        log.error("%s stopped: the database stayed unreachable (%s)", name, error)
        return Executed(Outcome.database_unreachable)
    except Exception as error:
        log.exception("%s failed", name)
        try:
            holder.write(lambda session: lease.fail(session, model, row_id, f"{type(error).__name__}: {error}",
                                                    traceback.format_exc(), worker))
        except DATABASE_ERRORS:
            log.error("%s failed and the database is unreachable to say so", name)
        return Executed(Outcome.failed)

    try:
        if done.stopped is StopReason.shutdown:
            # Queued again in the database; its id is sent once this worker no longer consumes
            # (worker/shutdown.py), or by the reconcile step.
            if holder.write(lambda session: lease.release(session, model, row_id, worker)):
                log.info("%s stopped %s for a shutdown and is queued again", name, done.reached)
            return Executed(Outcome.queued_again)
        holder.write(lambda session: done.store(session, done.stopped is StopReason.cancelled))
    except LeaseLost:
        log.warning("%s ended here but was given to another worker meanwhile; its result is theirs", name)
        return Executed(Outcome.lease_lost)
    except DATABASE_ERRORS as error:
        log.error("%s ended but the database stayed unreachable (%s); it will be resumed and end again", name, error)
        return Executed(Outcome.database_unreachable)
    ended = Outcome.cancelled if done.stopped is StopReason.cancelled else Outcome.succeeded
    log.info("%s %s", name, ended)
    return Executed(ended)
