"""The Celery tasks: thin wrappers that hand a run id to the executor, a dataset job id to
dataset_jobs. They are shared tasks, bound to whichever app imports this module (worker.celery_app),
so this module never imports the app back."""

from __future__ import annotations

import logging
import os
import time

from celery import shared_task
from celery.exceptions import Reject

from backend.queue import DATASET_JOB_TASK, TRAIN_RUN_TASK
from backend.settings import get_settings

from . import shutdown
from .lease_holder import DatabaseUnavailable

log = logging.getLogger("missmod.worker")

# How long to wait before giving an id back to the broker when the database cannot be reached
# (the run or job cannot be claimed); without a pause the same id would bounce back at once.
DATABASE_RETRY_SECONDS = 5.0


def _execute(task, execute, row_id: int, noun: str) -> None:
    """Run `execute` (a run's or a job's) so that SIGTERM stops it at its next step and gives it
    back, and a database that cannot be reached gives its id back to the broker."""
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

    _execute(self, execute_run, run_id, "run")


@shared_task(name=DATASET_JOB_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def dataset_job(self, job_id: int) -> None:
    from .dataset_jobs import execute_job  # imports torch, in the child process only

    _execute(self, execute_job, job_id, "dataset job")
