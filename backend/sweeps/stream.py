"""The live event stream of a sweep, polled from the database like a run's stream.

Events: `runs` (every run at first, then the runs that changed, and the ids of runs deleted),
`progress` (runs per state), `summary` (the comparison table and the trend, recomputed
only when a run's state or result changed), `end` (every run finished), `gone` (deleted).
A cheap query (runs per state and epochs so far) tells whether anything moved at all, so an
idle sweep of thousands of runs costs one small query per poll.

One poller per sweep serves every client of this process watching it (SweepHub), each poll a
short session: a waiting stream holds no database connection (backend/live.py).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import sessionmaker
from sse_starlette import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from ..live import Subscriber, cancel_task, log
from ..runs.models import Run, RunState
from . import service
from .analysis import missing_rate_trend
from .models import Sweep
from .schemas import SweepRunOut, table_out, trend_out

DATABASE_ERRORS = (OperationalError, InterfaceError, PoolTimeoutError)


def _fingerprint(session, sweep_id: int) -> tuple:
    query = (select(Run.state, func.count(Run.id), func.coalesce(func.sum(Run.epochs_completed), 0),
                    func.max(Run.id), func.sum(Run.test_accuracy), func.count(Run.broker_error))
             .where(Run.sweep_id == sweep_id).group_by(Run.state).order_by(Run.state))
    return tuple(tuple(row) for row in session.execute(query))


def _runs(session, sweep_id: int) -> list[SweepRunOut]:
    query = (select(Run.id, Run.name, Run.state, Run.method, Run.fusion, Run.missing_modality, Run.missing_rate,
                    Run.seed, Run.epochs_completed, Run.spec["epochs"].as_integer().label("epochs"), Run.test_accuracy,
                    Run.best_epoch,
                    and_(Run.state == RunState.queued, Run.broker_error.is_not(None)).label("awaiting_broker"),
                    Run.external)
             .where(Run.sweep_id == sweep_id).order_by(Run.id))
    return [SweepRunOut.model_validate(row) for row in session.execute(query)]


def _summary(session, sweep: Sweep) -> dict[str, Any]:
    table, results, comparison = service.sweep_table(session, sweep)  # the default reference and test
    dataset = results[0].dataset if results else None
    paper = service.paper_context(sweep, dataset)
    return {"table": table_out(sweep.id, table, paper, comparison).model_dump(mode="json"),
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
            # Runs trained elsewhere and logged into the sweep are not its progress (service.progress_of).
            counts = Counter(run.state for run in current.values() if not run.external)
            progress = service.progress_from_counts(counts, sum(run.external for run in current.values()))
            events.append({"event": "progress", "data": json.dumps(progress)})
            results_key = tuple((run.id, run.state, run.test_accuracy) for run in current.values())
            if results_key != self.results_key:
                self.results_key = results_key
                events.append(SUMMARY_DUE)
            if progress["done"]:
                events.append({"event": "end", "data": json.dumps(progress)})
            return events

    def summary(self) -> dict[str, Any] | None:
        """The `summary` event (the table with its paired comparisons, and the trend): computed
        apart from poll(), so the run list and progress reach the page first."""
        with self.sessions() as session:
            sweep = session.get(Sweep, self.sweep_id)
            if sweep is None:
                return None
            return {"event": "summary", "data": json.dumps(_summary(session, sweep))}


# Stands in poll()'s events for the summary, computed by SweepWatcher.summary() once the events
# before it are sent.
SUMMARY_DUE: dict[str, Any] = {"event": "summary", "data": None}


def _encoded(events: list[dict[str, Any]]) -> bytes:
    return b"".join(ServerSentEvent(**event).encode() for event in events)


class SweepTopic:
    """The one poller of a sweep watched by any number of clients of this process."""

    def __init__(self, hub: "SweepHub", sweep_id: int):
        self.hub, self.sweep_id = hub, sweep_id
        self.subscribers: set[Subscriber] = set()
        self.watcher = SweepWatcher(hub.sessions, sweep_id)
        # The state as of the last poll, for a client that joins later: the runs, then the
        # latest progress and summary (None until the first poll, whose events are all a
        # first client needs).
        self.runs: list[dict[str, Any]] | None = None
        self.progress: dict[str, Any] | None = None
        self.summary: dict[str, Any] | None = None
        self.task: asyncio.Task | None = None

    def join(self, subscriber: Subscriber) -> None:
        self.subscribers.add(subscriber)
        if self.runs is not None:
            events = [{"event": "runs", "data": json.dumps({"full": True, "runs": self.runs, "removed": []})},
                      *(event for event in (self.progress, self.summary) if event is not None)]
            subscriber.send(_encoded(events))

    async def poll_forever(self) -> None:
        while self.subscribers:
            try:
                events = await run_in_threadpool(self.watcher.poll)
            except DATABASE_ERRORS as error:
                log.warning("live stream of sweep %s ended: database unreachable (%s)", self.sweep_id,
                            type(error).__name__)
                self._end([])
                return
            if events is None:
                self._end([{"event": "gone", "data": json.dumps({"sweep_id": self.sweep_id})}])
                return
            events = await self._with_summary(events)
            if events or self.runs is None:  # an idle poll changes nothing (a sweep may hold thousands of runs)
                self.runs = [run.model_dump(mode="json") for run in self.watcher.sent.values()]
            for event in events:
                if event["event"] == "progress":
                    self.progress = event
                elif event["event"] == "summary":
                    self.summary = event
            if any(event["event"] == "end" for event in events):
                self._end(events)
                return
            if events:
                chunk = _encoded(events)  # once, for every client
                for subscriber in list(self.subscribers):
                    subscriber.send(chunk)
            await asyncio.sleep(self.hub.poll_interval)

    async def _with_summary(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """poll() leaves a placeholder where the summary goes: computed here, once for every client."""
        resolved = []
        for event in events:
            if event is SUMMARY_DUE:
                event = await run_in_threadpool(self.watcher.summary)
                if event is None:
                    continue
            resolved.append(event)
        return resolved

    def _end(self, events: list[dict[str, Any]]) -> None:
        chunk = _encoded(events)
        for subscriber in list(self.subscribers):
            if chunk:
                subscriber.send(chunk)
            subscriber.close()
        self.subscribers.clear()
        if self.hub.topics.get(self.sweep_id) is self:  # not a newer poller of the same sweep
            del self.hub.topics[self.sweep_id]


class SweepHub:
    """Sweep id → its poller, for the sweeps being streamed by this process."""

    def __init__(self, sessions: sessionmaker, poll_interval: float):
        self.sessions, self.poll_interval = sessions, poll_interval
        self.topics: dict[int, SweepTopic] = {}

    def subscribe(self, sweep_id: int) -> tuple[SweepTopic, Subscriber]:
        topic = self.topics.get(sweep_id)
        if topic is None:
            topic = self.topics[sweep_id] = SweepTopic(self, sweep_id)
        subscriber = Subscriber()
        topic.join(subscriber)
        if topic.task is None:
            topic.task = asyncio.create_task(topic.poll_forever(), name=f"sweep-stream-{sweep_id}")
        return topic, subscriber

    def unsubscribe(self, topic: SweepTopic, subscriber: Subscriber) -> None:
        subscriber.closed = True
        topic.subscribers.discard(subscriber)
        if not topic.subscribers and self.topics.get(topic.sweep_id) is topic:
            # Its poller ends at its next turn; a client arriving meanwhile starts a new one.
            del self.topics[topic.sweep_id]

    async def close(self) -> None:
        for topic in list(self.topics.values()):
            await cancel_task(topic.task)


async def sweep_events(hub: SweepHub, sweep_id: int, on_end) -> AsyncIterator[dict]:
    topic, subscriber = hub.subscribe(sweep_id)
    try:
        async for event in subscriber.events():
            yield event
    finally:
        hub.unsubscribe(topic, subscriber)
        on_end()
