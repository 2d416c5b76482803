"""The Celery tasks: thin wrappers that hand a run id to the executor, a dataset job id to
dataset_jobs. They are shared tasks, bound to whichever app imports this module (worker.celery_app),
so this module never imports the app back."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator

from celery import shared_task
from celery.exceptions import Reject

from backend.db import session_factory
from backend.queue import DATASET_JOB_TASK, PREDICT_TASK, TRAIN_RUN_TASK
from backend.settings import get_settings
from backend.workers import service as workers
from backend.workers.models import SlotState

from . import shutdown
from .registry import slot_doing
from .slots import SlotLock

log = logging.getLogger("missmod.worker")

# How long to wait before giving an id back to the broker when the database cannot be reached
# (the run or job cannot be claimed); without a pause the same id would bounce back at once.
DATABASE_RETRY_SECONDS = 5.0


def _execute(task, execute, row_id: int, noun: str) -> None:
    """Run `execute` (a run's or a job's) so that SIGTERM stops it at its next step and gives it
    back, and a database that cannot be reached gives its id back to the broker."""
    from .lease_holder import DatabaseUnavailable  # the training library: in the task's process only

    try:
        with shutdown.stop_after_this_step_on_sigterm():
            execute(int(row_id), get_settings(), worker=f"{task.request.hostname}/{os.getpid()}",
                    stop_requested=shutdown.requested)
    except DatabaseUnavailable as error:
        # Nothing was claimed: the id goes back to the broker rather than being dropped.
        log.warning("%s %s: the database is unreachable (%s); its id goes back to the broker", noun, row_id, error)
        time.sleep(DATABASE_RETRY_SECONDS)
        raise Reject(str(error), requeue=True) from None


@shared_task(name=TRAIN_RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def train_run(self, run_id: int) -> None:
    from .executor import execute_run  # preloaded by the worker (worker/preload.py)

    settings = get_settings()
    with _in_a_slot(session_factory(settings.database_url), settings, self.request.hostname, int(run_id)):
        _execute(self, execute_run, run_id, "run")


def _own_slot_needed(sessions, run_id: int) -> bool:
    try:
        with sessions() as session:
            return workers.needs_own_slot(session, run_id)
    except Exception:  # the database is down: execute_run finds out and gives the id back
        return False


@contextlib.contextmanager
def _in_a_slot(sessions, settings, node: str, run_id: int) -> Iterator[None]:
    """Train in this pool process's slot: beside the worker's other slots, or alone when the
    run needs the GPU to itself (it ran out of memory beside others); the slot shows on the
    workers page meanwhile."""
    exclusive = _own_slot_needed(sessions, run_id)
    lock = SlotLock(settings.gpu_lock_dir, node)
    if not lock.is_free_for(exclusive):
        log.info("run %s waits for %s", run_id, "the GPU to itself" if exclusive else "a run alone on the GPU to end")
        slot_doing(sessions, node, SlotState.waiting, run_id)
    with lock.hold(exclusive):
        slot_doing(sessions, node, SlotState.training, run_id)
        try:
            yield
        finally:
            slot_doing(sessions, node, SlotState.idle)


@shared_task(name=DATASET_JOB_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def dataset_job(self, job_id: int) -> None:
    from .dataset_jobs import execute_job  # imports torch, in the child process only

    _execute(self, execute_job, job_id, "dataset job")


@shared_task(name=PREDICT_TASK, bind=True, acks_late=False, ignore_result=True)
def predict(self, request_id: str, run_id: int) -> None:
    """A prediction: acknowledged when it starts (a lost one is not delivered again: the API
    stopped waiting for it at its deadline), on the CPU, outside the GPU slots."""
    from .predict import execute_prediction  # the training library: in the task's process only

    execute_prediction(request_id, int(run_id), get_settings())
