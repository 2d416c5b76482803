"""Workers as plain functions over a session: a worker registers, beats and leaves; its slots
say what they train; the API lists the live ones with the queue. A worker is live while its
heartbeat is younger than HEARTBEAT_TIMEOUT (the same rule as a run's)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from ..db import utcnow
from ..queue import BUILTIN_METHOD_NAMES
from ..runs.models import Run, RunState
from .models import SlotState, Worker, WorkerSlot


@dataclass(frozen=True)
class WorkerIdentity:
    name: str
    host: str
    pid: int
    slots: int
    threads_per_run: int
    gpu: str | None = None
    gpu_name: str | None = None
    # The methods it trains (name → package and version) and those it cannot (name → why).
    methods: dict[str, Any] | None = None
    method_errors: dict[str, str] | None = None


def register_worker(session: Session, me: WorkerIdentity, *, forget_older_than: timedelta | None = None) -> None:
    """(Re)write the worker's row and its idle slots. Rows of workers dead for longer than
    `forget_older_than` are removed on the way (a host that vanished never unregisters)."""
    now = utcnow()
    if forget_older_than is not None:
        session.execute(delete(Worker).where(Worker.heartbeat_at < now - forget_older_than))
    session.execute(delete(Worker).where(Worker.name == me.name))
    session.flush()
    session.add(Worker(name=me.name, host=me.host, pid=me.pid, slots=me.slots, threads_per_run=me.threads_per_run,
                       gpu=me.gpu, gpu_name=me.gpu_name, started_at=now, heartbeat_at=now, methods=me.methods,
                       method_errors=me.method_errors,
                       slot_rows=[WorkerSlot(slot=i, state=SlotState.idle, since=now) for i in range(me.slots)]))
    session.commit()


def beat_worker(session: Session, name: str) -> bool:
    """Refresh the heartbeat; False when the row is gone (the worker should register again)."""
    changed = session.execute(update(Worker).where(Worker.name == name).values(heartbeat_at=utcnow()))
    session.commit()
    return changed.rowcount == 1


def unregister_worker(session: Session, name: str) -> None:
    session.execute(delete(WorkerSlot).where(WorkerSlot.worker == name))  # SQLite may run without cascades
    session.execute(delete(Worker).where(Worker.name == name))
    session.commit()


def set_slot(session: Session, worker: str, slot: int, state: str, run_id: int | None = None,
             pid: int | None = None) -> None:
    """What one slot does now. A slot of a worker that is not registered (yet) is ignored."""
    session.execute(update(WorkerSlot).where(WorkerSlot.worker == worker, WorkerSlot.slot == slot)
                    .values(state=state, run_id=run_id, pid=pid, since=utcnow()))
    session.commit()


def live_workers(session: Session, heartbeat_timeout: float, now: datetime | None = None) -> list[Worker]:
    now = now or utcnow()
    return list(session.scalars(select(Worker).where(Worker.heartbeat_at >= now - timedelta(seconds=heartbeat_timeout))
                                .order_by(Worker.host, Worker.name)))


@dataclass
class QueueSummary:
    depth: int  # runs queued in the database, not yet taken by a slot
    waiting: list[Run]  # the oldest of them, first to be trained


def queue_summary(session: Session, limit: int = 50) -> QueueSummary:
    queued = Run.state == RunState.queued
    depth = session.scalar(select(func.count(Run.id)).where(queued)) or 0
    waiting = list(session.scalars(select(Run).where(queued).order_by(Run.id).limit(limit)))
    return QueueSummary(int(depth), waiting)


def requeue_on_own_slot(session: Session, run_id: int, worker: str, error: str) -> bool:
    """A run that ran out of memory while sharing its GPU with other runs goes back to the queue
    marked `needs_own_slot`: the next worker to take it trains it alone on its GPU. Not counted
    as a worker loss; its checkpoint is kept. False when `worker` no longer held it."""
    run = session.get(Run, run_id)
    if run is None:
        return False
    info = {**(run.info or {}), "out_of_memory": {"while": "sharing its GPU with other runs", "error": error[:500]}}
    changed = session.execute(
        update(Run).where(Run.id == run_id, Run.state == RunState.running, Run.worker == worker)
        .values(state=RunState.queued, worker=None, needs_own_slot=True, awaiting_broker_since=utcnow(), info=info,
                error=None, error_detail=None))
    session.commit()
    return changed.rowcount == 1


def needs_own_slot(session: Session, run_id: int) -> bool:
    return bool(session.scalar(select(Run.needs_own_slot).where(Run.id == run_id)))


# What a worker registered before workers said which methods they train can train.
BUILTIN_ONLY = None


@dataclass
class MethodAvailability:
    """Which live workers can train each method, and why the others cannot."""

    workers: dict[str, list[str]]  # method → live workers that train it
    errors: dict[str, dict[str, str]]  # method → worker → why it cannot train it there

    def count(self, method: str, builtin: bool) -> int:
        """How many live workers can train it."""
        return len(set(self.workers.get(method, [])) | set(self.workers.get(BUILTIN_MARK, []) if builtin else []))

    def can_train(self, method: str, builtin: bool) -> bool:
        return bool(self.workers.get(method)) or (builtin and bool(self.workers.get(BUILTIN_MARK)))

    def waiting_reason(self, method: str, builtin: bool) -> str | None:
        """Why a queued run of `method` waits for a worker (None: some live worker trains it)."""
        if self.can_train(method, builtin):
            return None
        reason = f"no worker can train `{method}`"
        errors = self.errors.get(method)
        if errors:
            worker, error = next(iter(errors.items()))
            return f"{reason}: on {worker}, {error}"
        live = self.workers.get(ANY_WORKER)
        if not live:
            return f"{reason}: no worker is running"
        return (f"{reason}: no live worker has it installed (install the method's package on a worker and restart "
                f"it)")


BUILTIN_MARK = "(built-in)"  # a worker registered without a methods list trains the built-in ones
ANY_WORKER = "(any)"


def method_availability(session: Session, heartbeat_timeout: float) -> MethodAvailability:
    workers: dict[str, list[str]] = {}
    errors: dict[str, dict[str, str]] = {}
    for worker in live_workers(session, heartbeat_timeout):
        workers.setdefault(ANY_WORKER, []).append(worker.name)
        if worker.methods is BUILTIN_ONLY:
            workers.setdefault(BUILTIN_MARK, []).append(worker.name)
        for method in worker.methods or {}:
            workers.setdefault(method, []).append(worker.name)
        for method, error in (worker.method_errors or {}).items():
            errors.setdefault(method, {})[worker.name] = error
    return MethodAvailability(workers, errors)


def mark_waiting_runs(session: Session, heartbeat_timeout: float, run_ids: list[int] | None = None) -> None:
    """Say on each queued run (or those of `run_ids`) whether it waits for a worker that can
    train its method, and why; clear it where one can now. One UPDATE per method whose reason changed."""
    queued = [Run.state == RunState.queued, Run.external.is_(False)]
    if run_ids is not None:
        queued.append(Run.id.in_(run_ids))
    methods = list(session.scalars(select(Run.method).where(*queued).distinct()))
    if not methods:
        return
    availability = method_availability(session, heartbeat_timeout)
    for method in methods:
        reason = availability.waiting_reason(method, method in BUILTIN_METHOD_NAMES)
        if reason is not None:
            reason = reason[:1000]
        session.execute(update(Run).where(*queued, Run.method == method,
                                          Run.waiting_for_worker.is_distinct_from(reason))
                        .values(waiting_for_worker=reason))
    session.commit()
