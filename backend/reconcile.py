"""The reconcile step, run by the API at start-up and every RECONCILE_INTERVAL seconds, for
both kinds a worker executes (runs and dataset jobs): the database is the source of truth, so
it looks there for rows that no live worker holds any more and for ids that may never have
reached the broker (backend/lifecycle/reconcile.py). It is what makes a kill -9, a lost host or
a broker that cannot redeliver (the embedded filesystem broker) lose no run and no job. It also
advances every study not ended (backend/studies/service.py), so a process that died between a
trial's end and asking for the next costs a study a pass's delay, not its trials."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from .jobs.models import DatasetJob
from .lifecycle import reconcile as lifecycle
from .lifecycle.models import Leased
from .lifecycle.reconcile import ReconcileReport
from .queue import WorkQueue
from .runs import live_runs, outcomes
from .runs.models import Run
from .settings import Settings
from .studies import service as studies
from .workers import service as workers

log = logging.getLogger("missmod.reconcile")

# Every leased kind, and how its ids are sent to the workers.
def _run_sender(queue: WorkQueue, session: Session) -> Callable[[int], None]:
    """Sends a run's id to its method's queue (backend/queue.py: run_queue)."""
    def send(run_id: int) -> None:
        run = session.get(Run, run_id)
        queue.send_run(run_id, run.method if run is not None else None)
    return send


KINDS: dict[type[Leased], Callable[[WorkQueue, Session], Callable[[int], None]]] = {
    Run: _run_sender,
    DatasetJob: lambda queue, session: queue.send_job,
}


# The rows of a kind that workers hold: a run a script logs live (backend/runs/live_runs.py) is
# never queued for a worker; its script's silence makes it lost instead (live_runs.mark_lost).
WORKERS_ROWS = {Run: (Run.external.is_(False),)}


def reconcile(session: Session, queue: WorkQueue, *, heartbeat_timeout: float, max_retries: int,
              now: datetime | None = None) -> dict[type[Leased], ReconcileReport]:
    """One pass over every kind: what was queued again, failed, cancelled and sent, per kind."""
    return {model: lifecycle.reconcile(session, model, send(queue, session), heartbeat_timeout=heartbeat_timeout,
                                       max_retries=max_retries, now=now, where=WORKERS_ROWS.get(model, ()))
            for model, send in KINDS.items()}


def send_awaiting(session: Session, queue: WorkQueue, *, queued_before: datetime) -> dict[type[Leased], list[int]]:
    """Send the ids of every kind queued before `queued_before` whose id may not have been sent
    (e.g. given back by a worker shutting down)."""
    return {model: lifecycle.send_awaiting(session, model, send(queue, session), queued_before=queued_before)
            for model, send in KINDS.items()}


def running_on(session: Session, worker_prefix: str) -> dict[type[Leased], list[int]]:
    """What the workers named `worker_prefix…` hold running, of every kind."""
    return {model: lifecycle.running_on(session, model, worker_prefix) for model in KINDS}


def queued_again(session: Session, held: dict[type[Leased], list[int]]) -> dict[type[Leased], list[int]]:
    """Of `held`, what is queued now (given back by a worker's shutdown, or queued again since)."""
    return {model: lifecycle.queued_among(session, model, ids) for model, ids in held.items()}


def requeue_interrupted(session: Session, worker_prefix: str, queue: WorkQueue) -> dict[type[Leased], list[int]]:
    """Queue again what the workers named `worker_prefix…` left running (the local stack stopped)."""
    return {model: lifecycle.requeue_interrupted(session, model, worker_prefix, send(queue, session))
            for model, send in KINDS.items()}


def reconcile_once(settings: Settings, sessions: sessionmaker, queue: WorkQueue) -> dict[type[Leased], ReconcileReport]:
    with sessions() as session:
        reports = reconcile(session, queue, heartbeat_timeout=settings.heartbeat_timeout,
                            max_retries=settings.run_max_retries)
        ended = reports[Run].failed + reports[Run].cancelled
        # Runs logged live by a script that went silent: lost.
        ended += live_runs.mark_lost(session, settings.live_run_timeout)
        if ended:  # their sweeps may be finished; the webhook hears of the failures
            outcomes.announce_ended(session, settings, ended)
        # A process that ended a trial's run may have died before asking for the next trial.
        studies.advance_active(session, queue)
        # Which queued runs wait for a worker that can train their method (a plugin's), and why.
        workers.mark_waiting_runs(session, settings.heartbeat_timeout)
    for model, report in reports.items():
        if report:
            log.warning("reconciled %ss: queued again %s, failed %s, cancelled %s, sent to the broker %s",
                        model.noun, report.requeued, report.failed, report.cancelled, report.sent)
    return reports


async def reconcile_periodically(settings: Settings, sessions: sessionmaker, queue: WorkQueue) -> None:
    while True:
        try:
            await run_in_threadpool(reconcile_once, settings, sessions, queue)
        except Exception as error:  # the database may be down; the next pass tries again
            log.warning("reconcile step failed: %s: %s", type(error).__name__, error)
        await asyncio.sleep(settings.reconcile_interval)
