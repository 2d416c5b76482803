"""The live stream of the workers and the queue: the hub's `workers` topic (backend/live.py).

Events: `workers` (the workers, their slots and the queue: a whole snapshot, whenever anything
in it changes). A subscriber's cursor is the digest of the snapshot it was last sent (the
event's id), so a client that resumes with it is sent nothing until something changes.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..live import Delivery, Topic, digest, encode
from ..runs.models import Run
from . import service
from .models import SlotState
from .schemas import QueueOut, SlotOut, WaitingRunOut, WorkerOut, WorkersSnapshot

ALL = "all"  # the one topic of this kind


def workers_out(session: Session, heartbeat_timeout: float) -> list[WorkerOut]:
    workers = service.live_workers(session, heartbeat_timeout)
    run_ids = {slot.run_id for w in workers for slot in w.slot_rows if slot.run_id is not None}
    names = dict(session.execute(select(Run.id, Run.name).where(Run.id.in_(run_ids))).all()) if run_ids else {}
    return [
        WorkerOut(name=w.name, host=w.host, pid=w.pid, gpu=w.gpu, gpu_name=w.gpu_name,
                  threads_per_run=w.threads_per_run, started_at=w.started_at, heartbeat_at=w.heartbeat_at,
                  busy=sum(slot.state == SlotState.training for slot in w.slot_rows),
                  methods=list(w.methods) if isinstance(w.methods, dict) else None,
                  method_errors=w.method_errors if isinstance(w.method_errors, dict) else {},
                  slots=[SlotOut(index=slot.slot, state=slot.state, gpu=w.gpu, run_id=slot.run_id,
                                 run_name=names.get(slot.run_id), pid=slot.pid, since=slot.since)
                         for slot in w.slot_rows])
        for w in workers
    ]


def queue_out(session: Session) -> QueueOut:
    summary = service.queue_summary(session)
    return QueueOut(depth=summary.depth, waiting=[
        WaitingRunOut(id=r.id, name=r.name, created_at=r.created_at, needs_own_slot=r.needs_own_slot)
        for r in summary.waiting])


def workers_snapshot(session: Session, heartbeat_timeout: float) -> WorkersSnapshot:
    return WorkersSnapshot(workers=workers_out(session, heartbeat_timeout), queue=queue_out(session))


class WorkersReading(NamedTuple):
    body: str
    token: str


class WorkersTopic(Topic):
    kind = "workers"

    def __init__(self, poll_interval: float, heartbeat_timeout: float):
        # The snapshot is a handful of queries: twice a second at most, whatever the run streams poll at.
        super().__init__(max(poll_interval, 0.5))
        self.heartbeat_timeout = heartbeat_timeout

    def read(self, session: Session, wanted: dict[Hashable, tuple[Hashable, Any]]) -> dict[Hashable, WorkersReading]:
        body = workers_snapshot(session, self.heartbeat_timeout).model_dump_json()
        return {key: WorkersReading(body, digest(body)) for key in wanted}

    def deliver(self, reading: WorkersReading, cursor: Hashable) -> Delivery:
        if cursor == reading.token:
            return Delivery(b"", cursor)
        return Delivery(encode("workers", reading.body, reading.token), reading.token)
