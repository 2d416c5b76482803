"""The live event stream of a run, polled from the database (the source of truth) so it works
the same on SQLite and PostgreSQL, with any broker, and survives an API restart: the client
reconnects with its cursor and misses nothing.

One poller (RunHub) serves every stream of this process: each poll is one short session that
reads all the runs being watched (two queries, plus the new points of the runs that have some),
and its results are fanned out to every client's queue. A waiting stream holds no connection,
and a hundred clients on one run cost what one does (backend/live.py).

Events: `metrics` (new points; the event id is the cursor), `run` (the run whenever it changes),
`end` (finished, nothing more to send), `gone` (deleted).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import sessionmaker
from sse_starlette import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from ..live import Subscriber, cancel_task, log
from . import service
from .models import TERMINAL_STATES, MetricPoint, Run
from .schemas import RunOut

BATCH_LIMIT = 5_000
DATABASE_ERRORS = (OperationalError, InterfaceError, PoolTimeoutError)


class RunSubscriber(Subscriber):
    def __init__(self, run_id: int, after: int):
        super().__init__()
        self.run_id, self.cursor = run_id, after
        self.last_run_json: str | None = None


class Found(NamedTuple):
    run_json: str | None  # None: the run is gone
    state: str | None
    points: list  # after the cursor asked for
    full: bool  # more points are waiting than one batch holds


def read_runs(sessions: sessionmaker, cursors: dict[int, int]) -> dict[int, Found]:
    """Run id → what a poll found of it. The runs are read before their points: the
    worker commits every point before a final state, so a final state read here means the
    points read next are complete."""
    ids = list(cursors)
    with sessions() as session:
        runs = {run.id: (RunOut.model_validate(run).model_dump_json(), run.state)
                for run in session.scalars(select(Run).where(Run.id.in_(ids)))}
        newest = dict(session.execute(select(MetricPoint.run_id, func.max(MetricPoint.id))
                                      .where(MetricPoint.run_id.in_(ids)).group_by(MetricPoint.run_id)).all())
        found = {}
        for run_id, after in cursors.items():
            if run_id not in runs:
                found[run_id] = Found(None, None, [], False)
                continue
            points = service.metrics_after(session, run_id, after, BATCH_LIMIT) \
                if (newest.get(run_id) or 0) > after else []
            found[run_id] = Found(*runs[run_id], points, len(points) == BATCH_LIMIT)
        return found


def encode(event: str, data: str, id: str | None = None) -> bytes:
    return ServerSentEvent(data=data, event=event, id=id).encode()


def _points_event(points: list) -> bytes:
    cursor = points[-1].id
    body = {"cursor": cursor, "points": [{"epoch": p.epoch, "step": p.step, "name": p.name, "value": p.value}
                                         for p in points]}
    return encode("metrics", json.dumps(body), str(cursor))


class RunHub:
    """The one poller of the runs being streamed by this process."""

    def __init__(self, sessions: sessionmaker, poll_interval: float):
        self.sessions, self.poll_interval = sessions, poll_interval
        self.watching: dict[int, set[RunSubscriber]] = {}
        self._task: asyncio.Task | None = None
        self._someone_joined = asyncio.Event()

    def subscribe(self, run_id: int, after: int) -> RunSubscriber:
        subscriber = RunSubscriber(run_id, after)
        self.watching.setdefault(run_id, set()).add(subscriber)
        self._someone_joined.set()  # served at once, not after the rest of an interval
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll_forever(), name="run-streams")
        return subscriber

    def unsubscribe(self, subscriber: RunSubscriber) -> None:
        subscriber.closed = True
        watchers = self.watching.get(subscriber.run_id)
        if watchers is not None:
            watchers.discard(subscriber)
            if not watchers:
                del self.watching[subscriber.run_id]

    async def close(self) -> None:
        await cancel_task(self._task)

    async def _poll_forever(self) -> None:
        while self.watching:
            self._someone_joined.clear()
            cursors = {run_id: min(s.cursor for s in watchers) for run_id, watchers in self.watching.items()}
            try:
                found = await run_in_threadpool(read_runs, self.sessions, cursors)
            except DATABASE_ERRORS as error:
                # End the streams cleanly; the pages reconnect from their cursors once the database is back.
                log.warning("live streams of runs %s ended: database unreachable (%s)", sorted(cursors),
                            type(error).__name__)
                for watchers in list(self.watching.values()):
                    for subscriber in list(watchers):
                        subscriber.close()
                self.watching.clear()
                return
            more_waiting = False
            for run_id, run in found.items():
                more_waiting |= run.full
                # What a poll sends a client, encoded once for all the clients it is the same for
                # (most are at the same cursor): keyed by (new points, run changed, ended).
                chunks: dict[tuple[int, int, bool, bool], bytes] = {}
                for subscriber in list(self.watching.get(run_id, ())):
                    if subscriber.cursor < cursors[run_id]:
                        # Joined while this poll read the database, behind the cursor it read from:
                        # the points in between were not read. The next poll (at once) serves it;
                        # delivering now would skip them and could end its stream without them.
                        self._someone_joined.set()
                        continue
                    self._deliver(subscriber, run, chunks)
            if not more_waiting:
                try:
                    await asyncio.wait_for(self._someone_joined.wait(), self.poll_interval)
                except TimeoutError:
                    pass

    def _deliver(self, subscriber: RunSubscriber, run: Found,
                 chunks: dict[tuple[int, int, bool, bool], bytes]) -> None:
        if run.run_json is None:
            subscriber.send(encode("gone", json.dumps({"run_id": subscriber.run_id})))
            subscriber.close()
            self.unsubscribe(subscriber)
            return
        # The batch was read after the slowest watcher's cursor: each gets what it has not seen.
        points = run.points
        if not points or points[-1].id <= subscriber.cursor:
            new = []
        elif points[0].id > subscriber.cursor:
            new = points  # the usual case: every client at the same cursor
        else:
            new = [p for p in points if p.id > subscriber.cursor]
        run_changed = run.run_json != subscriber.last_run_json
        ended = not run.full and run.state in TERMINAL_STATES
        # Two clients at different cursors can have as many new points, not the same ones.
        key = (new[0].id if new else 0, len(new), run_changed, ended)
        if key != (0, 0, False, False):
            if key not in chunks:
                parts = [_points_event(new)] if new else []
                if run_changed:
                    parts.append(encode("run", run.run_json))
                if ended:
                    parts.append(encode("end", json.dumps({"state": run.state})))
                chunks[key] = b"".join(parts)
            subscriber.send(chunks[key])
        if new:
            subscriber.cursor = new[-1].id
        subscriber.last_run_json = run.run_json
        if ended:
            subscriber.close()
            self.unsubscribe(subscriber)


async def run_events(hub: RunHub, run_id: int, after: int, on_end) -> AsyncIterator[dict]:
    subscriber = hub.subscribe(run_id, after)
    try:
        async for event in subscriber.events():
            yield event
    finally:
        hub.unsubscribe(subscriber)
        on_end()
