"""The worker in the database, for the workers page and GET /api/workers: its main process
registers it (host, slots, GPU) once its pool is up, refreshes its heartbeat on Celery's timer
and removes it when it stops; each slot marks what it trains (`slot_doing`). The database is
what every host's API reads, so a worker on another host shows too.

The main process uses an engine of its own, never shared with the pool processes it forks:
after a fork the child forgets it without closing its connections (they are the parent's)."""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

from celery import bootsteps

from backend.db import make_engine
from backend.settings import get_settings
from backend.workers import service
from backend.workers.models import SlotState

from . import methods, slots
from .system_metrics import visible_gpu

log = logging.getLogger("missmod.worker")

# A worker whose heartbeat is this much older than HEARTBEAT_TIMEOUT is removed by the next
# worker that registers (a lost host never unregisters itself).
FORGET_AFTER_TIMEOUTS = 10


class _MainProcessDatabase:
    def __init__(self, url: str):
        from sqlalchemy.orm import sessionmaker

        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        os.register_at_fork(after_in_child=lambda: self.engine.dispose(close=False))


class WorkerRegistry(bootsteps.StartStopStep):
    """Worker bootstep (after the pool and the timer)."""

    requires = {"celery.worker.components:Pool", "celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.timer_entry = None
        self.database: _MainProcessDatabase | None = None
        self.identity: service.WorkerIdentity | None = None

    def start(self, worker) -> None:
        settings = get_settings()
        gpu = visible_gpu()
        self.identity = service.WorkerIdentity(
            name=worker.hostname, host=socket.gethostname(), pid=os.getpid(), slots=int(worker.concurrency),
            threads_per_run=slots.THREADS_PER_RUN or 1, gpu=gpu.uuid if gpu else None, gpu_name=gpu.name if gpu else None,
            methods=dict(methods.trainable) or None, method_errors=dict(methods.errors) or None)
        self.database = _MainProcessDatabase(settings.database_url)
        self._register()
        interval = settings.heartbeat_interval
        self.timer_entry = worker.timer.call_repeatedly(interval, self._beat, priority=10)
        log.info("worker %s registered: %d slot(s), %d thread(s) per run, %s", worker.hostname,
                 self.identity.slots, self.identity.threads_per_run,
                 f"GPU {gpu.name} ({gpu.uuid})" if gpu else "no GPU")

    def _register(self) -> None:
        timeout = get_settings().heartbeat_timeout
        try:
            with self.database.sessions() as session:
                service.register_worker(session, self.identity,
                                        forget_older_than=timedelta(seconds=FORGET_AFTER_TIMEOUTS * timeout))
        except Exception as error:  # the database may be down; the next beat registers again
            log.warning("could not register worker %s: %s", self.identity.name, error)

    def _beat(self) -> None:
        try:
            with self.database.sessions() as session:
                if not service.beat_worker(session, self.identity.name):
                    self._register()
        except Exception as error:
            log.warning("worker heartbeat failed: %s", error)

    def stop(self, worker) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
        if self.database is not None and self.identity is not None:
            try:
                with self.database.sessions() as session:
                    service.unregister_worker(session, self.identity.name)
            except Exception as error:
                log.warning("could not unregister worker %s: %s", self.identity.name, error)


def slot_doing(sessions, worker: str, state: str, run_id: int | None = None) -> None:
    """From a slot's process: what it does now (best effort: bookkeeping never fails a run)."""
    try:
        with sessions() as session:
            service.set_slot(session, worker, slots.slot_index(), state, run_id,
                             os.getpid() if state != SlotState.idle else None)
    except Exception as error:
        log.warning("could not record slot %s of %s as %s: %s", slots.slot_index(), worker, state, error)
