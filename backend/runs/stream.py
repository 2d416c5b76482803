"""The live event stream of a run: the hub's `run` topic (backend/live.py), polled from the
database (the source of truth) so it works the same on SQLite and PostgreSQL, with any broker,
and survives an API restart: the client reconnects with its cursor and misses nothing.

Events: `metrics` (new points; the event id is the cursor), `run` (the run whenever it changes),
`end` (finished, nothing more to send), `gone` (deleted).

A subscriber's cursor is (the last point id it was sent, a digest of the run as it was last
sent). One poll reads every watched run (two queries, plus the new points of the runs that have
some, from the earliest cursor of each run's subscribers).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..api.params import MAX_CURSOR
from ..live import Delivery, Topic, digest, encode
from . import service
from .models import TERMINAL_STATES, MetricPoint, Run
from .schemas import RunOut

BATCH_LIMIT = 5_000


class RunCursor(NamedTuple):
    point: int  # the last point sent (0: none yet)
    run: str | None = None  # the digest of the run as last sent (None: not sent yet)


class RunReading(NamedTuple):
    run_id: int
    run_json: str | None  # None: the run is gone
    run_digest: str | None
    state: str | None
    after: int  # the points were read after this cursor
    points: list  # after `after`, in id order
    full: bool  # more points are waiting than one batch holds


def cursor_from(after: int, last_event_id: str | None, max_cursor: int) -> RunCursor:
    """A reconnecting EventSource resumes after its Last-Event-ID (the last `metrics` id)."""
    if last_event_id and last_event_id.isdigit() and int(last_event_id) <= max_cursor:
        after = max(after, int(last_event_id))
    return RunCursor(after)


def _points_event(points: list) -> bytes:
    cursor = points[-1].id
    body = {"cursor": cursor, "points": [{"epoch": p.epoch, "step": p.step, "name": p.name, "value": p.value}
                                         for p in points]}
    return encode("metrics", json.dumps(body), str(cursor))


class RunTopic(Topic):
    kind = "run"

    def cursor_from(self, last_event_id: str | None) -> RunCursor:
        return cursor_from(0, last_event_id, MAX_CURSOR)

    def read(self, session: Session, wanted: dict[Hashable, tuple[Hashable, object]]) -> dict[Hashable, RunReading]:
        """The runs are read before their points: the worker commits every point before a final
        state, so a final state read here means the points read next are complete."""
        ids = list(wanted)
        runs = {run.id: run for run in session.scalars(select(Run).where(Run.id.in_(ids)))}
        newest = dict(session.execute(select(MetricPoint.run_id, func.max(MetricPoint.id))
                                      .where(MetricPoint.run_id.in_(ids)).group_by(MetricPoint.run_id)).all())
        found = {}
        for run_id, (earliest, _) in wanted.items():
            run = runs.get(run_id)
            if run is None:
                found[run_id] = RunReading(run_id, None, None, None, earliest.point, [], False)
                continue
            run_json = RunOut.model_validate(run).model_dump_json()
            points = service.metrics_after(session, run_id, earliest.point, BATCH_LIMIT) \
                if (newest.get(run_id) or 0) > earliest.point else []
            found[run_id] = RunReading(run_id, run_json, digest(run_json), run.state, earliest.point, points,
                                       len(points) == BATCH_LIMIT)
        return found

    def earliest(self, cursors: Iterable[RunCursor]) -> RunCursor:
        return RunCursor(min(cursor.point for cursor in cursors))

    def covers(self, reading: RunReading, cursor: RunCursor) -> bool:
        return cursor.point >= reading.after

    def more_waiting(self, reading: RunReading) -> bool:
        return reading.full

    def deliver(self, reading: RunReading, cursor: RunCursor) -> Delivery:
        if reading.run_json is None:
            return Delivery(encode("gone", json.dumps({"run_id": reading.run_id})), cursor, ended=True)
        # The batch was read after the earliest subscriber's cursor: each gets what it has not seen.
        points = reading.points
        if not points or points[-1].id <= cursor.point:
            new = []
        elif points[0].id > cursor.point:
            new = points  # the usual case: every client at the same cursor
        else:
            new = [p for p in points if p.id > cursor.point]
        ended = not reading.full and reading.state in TERMINAL_STATES
        parts = [_points_event(new)] if new else []
        if reading.run_digest != cursor.run:
            parts.append(encode("run", reading.run_json))
        if ended:
            parts.append(encode("end", json.dumps({"state": reading.state})))
        return Delivery(b"".join(parts), RunCursor(new[-1].id if new else cursor.point, reading.run_digest), ended)
