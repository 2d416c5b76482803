"""The live event stream of a sweep, polled from the database like a run's stream.

Events: `runs` (every run at first, then the runs that changed, and the ids of runs deleted),
`progress` (runs per state), `summary` (the comparison table and the trend, recomputed
only when a run's state or result changed), `end` (every run finished), `gone` (deleted).
A cheap query (runs per state and epochs so far) tells whether anything moved at all, so an
idle sweep of thousands of runs costs one small query per poll.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from ..runs.models import Run, RunState
from . import service
from .analysis import missing_rate_trend
from .models import Sweep
from .schemas import SweepRunOut, table_out, trend_out


def _fingerprint(session, sweep_id: int) -> tuple:
    query = (select(Run.state, func.count(Run.id), func.coalesce(func.sum(Run.epochs_completed), 0),
                    func.max(Run.id), func.sum(Run.test_accuracy), func.count(Run.broker_error))
             .where(Run.sweep_id == sweep_id).group_by(Run.state).order_by(Run.state))
    return tuple(tuple(row) for row in session.execute(query))


def _runs(session, sweep_id: int) -> list[SweepRunOut]:
    query = (select(Run.id, Run.name, Run.state, Run.method, Run.fusion, Run.missing_modality, Run.missing_rate,
                    Run.seed, Run.epochs_completed, Run.spec["epochs"].as_integer(), Run.test_accuracy, Run.best_epoch,
                    and_(Run.state == RunState.queued, Run.broker_error.is_not(None)))
             .where(Run.sweep_id == sweep_id).order_by(Run.id))
    fields = list(SweepRunOut.model_fields)
    return [SweepRunOut(**dict(zip(fields, row))) for row in session.execute(query)]


def _summary(session, sweep: Sweep) -> dict[str, Any]:
    table, results = service.sweep_table(session, sweep)
    dataset = results[0].spec.get("dataset") if results else None
    paper = service.paper_context(sweep, dataset)
    return {"table": table_out(sweep.id, table, paper).model_dump(mode="json"),
            "trend": trend_out(sweep.id, missing_rate_trend(table)).model_dump(mode="json")}


class SweepWatcher:
    """What the client has been sent, so each poll sends only what changed."""

    def __init__(self, sessions: sessionmaker, sweep_id: int):
        self.sessions, self.sweep_id = sessions, sweep_id
        self.fingerprint: tuple | None = None
        self.sent: dict[int, SweepRunOut] = {}
        self.results_key: tuple | None = None

    def poll(self) -> list[dict[str, Any]] | None:
        """The events to send now ([] when nothing moved); None when the sweep is gone."""
        with self.sessions() as session:
            sweep = session.get(Sweep, self.sweep_id)
            if sweep is None:
                return None
            fingerprint = _fingerprint(session, self.sweep_id)
            if fingerprint == self.fingerprint:
                return []
            first = self.fingerprint is None
            self.fingerprint = fingerprint
            current = {run.id: run for run in _runs(session, self.sweep_id)}
            changed = [run for run_id, run in current.items() if self.sent.get(run_id) != run]
            removed = [run_id for run_id in self.sent if run_id not in current]
            self.sent = current
            events: list[dict[str, Any]] = []
            if changed or removed or first:
                events.append({"event": "runs", "data": json.dumps({
                    "full": first, "runs": [run.model_dump(mode="json") for run in changed], "removed": removed})})
            counts = Counter(run.state for run in current.values())
            progress = service.progress_from_counts(counts)
            events.append({"event": "progress", "data": json.dumps(progress)})
            results_key = tuple((run.id, run.state, run.test_accuracy) for run in current.values())
            if results_key != self.results_key:
                self.results_key = results_key
                events.append({"event": "summary", "data": json.dumps(_summary(session, sweep))})
            if progress["done"]:
                events.append({"event": "end", "data": json.dumps(progress)})
            return events


async def sweep_events(sessions: sessionmaker, sweep_id: int, poll_interval: float,
                       request: Request) -> AsyncIterator[dict]:
    watcher = SweepWatcher(sessions, sweep_id)
    while not await request.is_disconnected():
        events = await run_in_threadpool(watcher.poll)
        if events is None:
            yield {"event": "gone", "data": json.dumps({"sweep_id": sweep_id})}
            return
        for event in events:
            yield event
        if any(event["event"] == "end" for event in events):
            return
        await asyncio.sleep(poll_interval)
