"""The live event stream of one run, polled from the database (the source of truth) so it
works the same on SQLite and PostgreSQL, with any broker, and survives an API restart: the
client reconnects with its cursor and misses nothing."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from . import service
from .models import TERMINAL_STATES, Run
from .schemas import MetricPointOut, RunOut

BATCH_LIMIT = 5_000

log = logging.getLogger("missmod.stream")


def _snapshot(sessions: sessionmaker, run_id: int, after: int) -> tuple[RunOut | None, list[MetricPointOut], int]:
    """The run, then its points after the cursor. Reading the run first matters: the worker
    commits every point before it commits a final state, so a final state read here means
    the points read next are complete."""
    with sessions() as session:
        run = session.get(Run, run_id)
        if run is None:
            return None, [], after
        run_out = RunOut.model_validate(run)
        points = service.metrics_after(session, run_id, after, BATCH_LIMIT)
        cursor = points[-1].id if points else after
        return run_out, [MetricPointOut.model_validate(p) for p in points], cursor


async def run_events(sessions: sessionmaker, run_id: int, after: int, poll_interval: float,
                     request: Request) -> AsyncIterator[dict]:
    last_run_json = None
    while not await request.is_disconnected():
        try:
            run, points, cursor = await run_in_threadpool(_snapshot, sessions, run_id, after)
        except (OperationalError, InterfaceError) as error:
            # End the stream cleanly; the page reconnects from its cursor once the database is back.
            log.warning("stream of run %s ended: database unreachable (%s)", run_id, type(error).__name__)
            return
        if run is None:
            yield {"event": "gone", "data": json.dumps({"run_id": run_id})}
            return
        if points:
            after = cursor
            yield {"event": "metrics", "id": str(cursor),
                   "data": json.dumps({"cursor": cursor, "points": [p.model_dump() for p in points]})}
        run_json = run.model_dump_json()
        if run_json != last_run_json:
            last_run_json = run_json
            yield {"event": "run", "data": run_json}
        if run.state in TERMINAL_STATES and len(points) < BATCH_LIMIT:
            yield {"event": "end", "data": json.dumps({"state": run.state})}
            return
        if len(points) < BATCH_LIMIT:
            await asyncio.sleep(poll_interval)
