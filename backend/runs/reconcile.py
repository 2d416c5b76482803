"""The reconcile step, run by the API at start-up and every RECONCILE_INTERVAL seconds: the
database is the source of truth, so it looks there for runs that no live worker holds any more
and for run ids that may never have reached the broker (service.reconcile). It is what makes a
kill -9, a lost host or a broker that cannot redeliver (the embedded filesystem broker) lose
no run."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.orm import sessionmaker
from starlette.concurrency import run_in_threadpool

from ..queue import RunQueue
from ..settings import Settings
from . import outcomes, service

log = logging.getLogger("missmod.reconcile")


def reconcile_once(settings: Settings, sessions: sessionmaker, queue: RunQueue) -> service.ReconcileReport:
    with sessions() as session:
        report = service.reconcile(session, queue, heartbeat_timeout=settings.heartbeat_timeout,
                                   max_retries=settings.run_max_retries)
        if report.failed or report.cancelled:
            outcomes.announce_ended(session, settings, [*report.failed, *report.cancelled])
    if report:
        log.warning("reconciled: queued again %s, failed %s, cancelled %s, sent to the broker %s",
                    report.requeued, report.failed, report.cancelled, report.sent)
    return report


async def reconcile_periodically(settings: Settings, sessions: sessionmaker, queue: RunQueue) -> None:
    while True:
        try:
            await run_in_threadpool(reconcile_once, settings, sessions, queue)
        except Exception as error:  # the database may be down; the next pass tries again
            log.warning("reconcile step failed: %s: %s", type(error).__name__, error)
        await asyncio.sleep(settings.reconcile_interval)
