"""The Celery task: a thin wrapper that hands the run id to the executor."""

from __future__ import annotations

import os

from backend.queue import DATASET_JOB_TASK, TRAIN_RUN_TASK

from .celery_app import celery_app, settings


@celery_app.task(name=TRAIN_RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def train_run(self, run_id: int) -> None:
    from .executor import execute_run  # imports torch, in the child process only

    execute_run(int(run_id), settings, worker=f"{self.request.hostname}/{os.getpid()}")


@celery_app.task(name=DATASET_JOB_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def dataset_job(self, job_id: int) -> None:
    from .dataset_jobs import execute_job  # imports torch, in the child process only

    execute_job(int(job_id), settings, worker=f"{self.request.hostname}/{os.getpid()}")
