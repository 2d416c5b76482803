"""The live event stream of a sweep: the hub's `sweep` topic (backend/live.py).

Events: `runs` (every run at first, then the runs that changed, and the ids of runs deleted),
`progress` (runs per state), `summary` (the comparison table and the trend, recomputed
only when a run's state or result changed), `end` (every run finished), `gone` (deleted).
A cheap query (runs per state and epochs so far) tells whether anything moved at all, so an
idle sweep of thousands of runs costs one small query per poll.

A subscriber's cursor is the digest of the runs it was last sent (the id of each chunk's last
event): one at the previous poll's digest is sent what changed, one anywhere else (a new
client, or one resuming from an older state) the whole state, and one already at the latest
digest nothing, after an API restart too.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from ..live import Delivery, Topic, digest, encode
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
                    Run.seed, Run.epochs_completed, Run.spec["epochs"].as_integer().label("epochs"), Run.test_accuracy,
                    Run.best_epoch,
                    and_(Run.state == RunState.queued, Run.broker_error.is_not(None)).label("awaiting_broker"),
                    Run.external)
             .where(Run.sweep_id == sweep_id).order_by(Run.id))
    return [SweepRunOut.model_validate(row) for row in session.execute(query)]


def _summary(session, sweep: Sweep) -> str:
    table, results, comparison = service.sweep_table(session, sweep)  # the default reference and test
    dataset = results[0].dataset if results else None
    paper = service.paper_context(sweep, dataset)
    return json.dumps({"table": table_out(sweep.id, table, paper, comparison).model_dump(mode="json"),
                       "trend": trend_out(sweep.id, missing_rate_trend(table)).model_dump(mode="json")})


@dataclass(frozen=True)
class SweepReading:
    sweep_id: int
    gone: bool = False
    fingerprint: tuple = ()
    runs: dict[int, SweepRunOut] = field(default_factory=dict)
    token: str = ""  # the digest of the runs: what a subscriber that has this state holds
    progress: str = ""
    results_key: tuple = ()
    summary: str = ""
    done: bool = False
    # What changed since the previous reading (the one whose token is `since`).
    since: str | None = None
    changed: tuple[int, ...] = ()
    removed: tuple[int, ...] = ()
    summary_changed: bool = True


def read_sweep(session: Session, sweep_id: int, last: SweepReading | None) -> SweepReading:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        return SweepReading(sweep_id, gone=True)
    fingerprint = _fingerprint(session, sweep_id)
    if last is not None and not last.gone and fingerprint == last.fingerprint:
        return last  # nothing moved (a sweep may hold thousands of runs)
    current = {run.id: run for run in _runs(session, sweep_id)}
    before = last.runs if last is not None and not last.gone else {}
    # Runs trained elsewhere and logged into the sweep are not its progress (service.progress_of).
    counts = Counter(run.state for run in current.values() if not run.external)
    progress = service.progress_from_counts(counts, sum(run.external for run in current.values()))
    results_key = tuple((run.id, run.state, run.test_accuracy) for run in current.values())
    summary_changed = last is None or last.gone or results_key != last.results_key
    return SweepReading(
        sweep_id, fingerprint=fingerprint, runs=current,
        token=digest([run.model_dump(mode="json") for run in current.values()]),
        progress=json.dumps(progress), results_key=results_key,
        summary=_summary(session, sweep) if summary_changed else last.summary, done=bool(progress["done"]),
        since=last.token if last is not None and not last.gone else None,
        changed=tuple(run_id for run_id, run in current.items() if before.get(run_id) != run),
        removed=tuple(run_id for run_id in before if run_id not in current), summary_changed=summary_changed)


class SweepTopic(Topic):
    kind = "sweep"

    def read(self, session: Session, wanted: dict[Hashable, tuple[Hashable, Any]]) -> dict[Hashable, SweepReading]:
        return {sweep_id: read_sweep(session, sweep_id, last) for sweep_id, (_, last) in wanted.items()}

    def deliver(self, reading: SweepReading, cursor: Hashable) -> Delivery:
        if reading.gone:
            return Delivery(encode("gone", json.dumps({"sweep_id": reading.sweep_id})), cursor, ended=True)
        if cursor == reading.token:  # up to date; a finished sweep still ends the stream with `end`
            return Delivery(encode("end", reading.progress, reading.token) if reading.done else b"", cursor,
                            ended=reading.done)
        events: list[tuple[str, str]] = []
        if cursor is not None and cursor == reading.since:
            if reading.changed or reading.removed:
                events.append(("runs", json.dumps({"full": False, "runs": [
                    reading.runs[run_id].model_dump(mode="json") for run_id in reading.changed],
                    "removed": list(reading.removed)})))
            events.append(("progress", reading.progress))
            if reading.summary_changed:
                events.append(("summary", reading.summary))
        else:
            events += [("runs", json.dumps({"full": True, "runs": [
                           run.model_dump(mode="json") for run in reading.runs.values()], "removed": []})),
                       ("progress", reading.progress), ("summary", reading.summary)]
        if reading.done:
            events.append(("end", reading.progress))
        # The state's digest on the last event: what a reconnecting client has seen in full.
        chunk = b"".join(encode(event, data, reading.token if index == len(events) - 1 else None)
                         for index, (event, data) in enumerate(events))
        return Delivery(chunk, reading.token, ended=reading.done)
