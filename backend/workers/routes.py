"""GET /api/workers (the live workers), /api/workers/queue and a live stream of both."""

from __future__ import annotations

from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse
from typing import Annotated

from ..api.deps import SessionDep, SettingsDep
from ..live import open_stream, token_from
from .schemas import QueueOut, WorkerOut
from .stream import ALL, WorkersTopic, queue_out, workers_out

router = APIRouter(prefix="/api/workers", tags=["workers"])


@router.get("", response_model=list[WorkerOut])
def list_workers(session: SessionDep, settings: SettingsDep) -> list[WorkerOut]:
    """One entry per live worker (heartbeat younger than HEARTBEAT_TIMEOUT): its host, its GPU,
    and its slots with the run each trains."""
    return workers_out(session, settings.heartbeat_timeout)


@router.get("/queue", response_model=QueueOut)
def get_queue(session: SessionDep) -> QueueOut:
    """How many runs wait for a slot, and the first of them."""
    return queue_out(session)


@router.get("/stream", responses={503: {"description": "Too many live streams; see Retry-After"}},
            response_description="Server-Sent Events: `workers` (the workers and the queue, whenever "
                                 "they change; the event id is the snapshot's digest)")
async def stream_workers(request: Request,
                         last_event_id: Annotated[str | None, Header()] = None) -> EventSourceResponse:
    """Live workers and queue. A reconnecting EventSource is sent nothing until they change."""
    return await open_stream(request, WorkersTopic.kind, ALL, token_from(last_event_id))
