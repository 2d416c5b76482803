"""GET /api/workers (the live workers), /api/workers/queue and a live stream of both."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from ..api.deps import SessionDep, SettingsDep
from ..runs.models import Run
from . import service
from .models import SlotState
from .schemas import QueueOut, SlotOut, WaitingRunOut, WorkerOut, WorkersSnapshot

router = APIRouter(prefix="/api/workers", tags=["workers"])
log = logging.getLogger("missmod.workers")


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


@router.get("", response_model=list[WorkerOut])
def list_workers(session: SessionDep, settings: SettingsDep) -> list[WorkerOut]:
    """One entry per live worker (heartbeat younger than HEARTBEAT_TIMEOUT): its host, its GPU,
    and its slots with the run each trains."""
    return workers_out(session, settings.heartbeat_timeout)


@router.get("/queue", response_model=QueueOut)
def get_queue(session: SessionDep) -> QueueOut:
    """How many runs wait for a slot, and the first of them."""
    return queue_out(session)


def _snapshot(sessions: sessionmaker, heartbeat_timeout: float) -> WorkersSnapshot:
    with sessions() as session:
        return WorkersSnapshot(workers=workers_out(session, heartbeat_timeout), queue=queue_out(session))


async def _events(sessions: sessionmaker, heartbeat_timeout: float, poll_interval: float,
                  request: Request) -> AsyncIterator[dict]:
    last = None
    while not await request.is_disconnected():
        try:
            snapshot = await run_in_threadpool(_snapshot, sessions, heartbeat_timeout)
        except (OperationalError, InterfaceError) as error:
            log.warning("workers stream ended: database unreachable (%s)", type(error).__name__)
            return  # the page's EventSource reconnects
        body = snapshot.model_dump_json()
        if body != last:  # a slot, a worker, a heartbeat or the queue changed
            last = body
            yield {"event": "workers", "data": body}
        await asyncio.sleep(poll_interval)


@router.get("/stream", response_description="Server-Sent Events: `workers` (the workers and the queue, whenever "
                                             "they change)")
def stream_workers(request: Request, settings: SettingsDep) -> EventSourceResponse:
    return EventSourceResponse(_events(request.app.state.sessions, settings.heartbeat_timeout,
                                       max(settings.stream_poll_interval, 0.5), request), ping=15)
