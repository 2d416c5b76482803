"""Dataset-job life cycle as plain functions over a session (as backend/runs/service.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..db import utcnow
from .models import DatasetJob, JobState, TERMINAL_JOB_STATES


class JobNotFound(LookupError):
    pass


class JobFinished(RuntimeError):
    pass


def active_job(session: Session, kind: str, dataset: str, params: dict[str, Any]) -> DatasetJob | None:
    """A queued or running job doing the same thing, which a new request joins instead."""
    jobs = session.scalars(select(DatasetJob).where(
        DatasetJob.kind == kind, DatasetJob.dataset == dataset,
        DatasetJob.state.in_([JobState.queued, JobState.running]))).all()
    return next((job for job in jobs if job.params == params), None)


def create_job(session: Session, kind: str, dataset: str, params: dict[str, Any], queue) -> DatasetJob:
    """Commit, then send (as for runs); marked failed if the broker cannot be reached."""
    job = DatasetJob(kind=kind, dataset=dataset, params=params, state=JobState.queued, created_at=utcnow())
    session.add(job)
    session.commit()
    try:
        queue.enqueue_job(job.id)
    except Exception as error:
        job.state, job.finished_at = JobState.failed, utcnow()
        job.error = f"could not send the job to the broker: {error}"
        session.commit()
        raise
    return job


def get_job(session: Session, job_id: int) -> DatasetJob:
    job = session.get(DatasetJob, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def list_jobs(session: Session, dataset: str | None = None, limit: int = 50,
              before_id: int | None = None) -> list[DatasetJob]:
    """Newest first; `before_id`: only older jobs than that one (the next page)."""
    query = select(DatasetJob)
    if dataset:
        query = query.where(DatasetJob.dataset == dataset)
    if before_id is not None:
        query = query.where(DatasetJob.id < before_id)
    return list(session.scalars(query.order_by(DatasetJob.id.desc()).limit(limit)))


def request_cancel(session: Session, job_id: int) -> DatasetJob:
    job = get_job(session, job_id)
    if job.is_terminal:
        raise JobFinished(f"job {job_id} is already {job.state}")
    job.cancel_requested = True
    if job.state == JobState.queued:
        job.state, job.finished_at = JobState.cancelled, utcnow()
    session.commit()
    return job


def requeue_interrupted(session: Session, worker_prefix: str, queue) -> list[int]:
    """Jobs left `running` by workers whose name starts with `worker_prefix` go back to the
    queue (they resume: finished clips are cached)."""
    jobs = session.scalars(select(DatasetJob).where(DatasetJob.state == JobState.running,
                                                    DatasetJob.worker.startswith(worker_prefix))).all()
    for job in jobs:
        job.state = JobState.queued
        job.error = "interrupted: its worker stopped; queued again"
    session.commit()
    for job in jobs:
        queue.enqueue_job(job.id)
    return [job.id for job in jobs]


# --- the worker's side ---------------------------------------------------------------


def start_job(session: Session, job_id: int, worker: str) -> DatasetJob | None:
    job = session.get(DatasetJob, job_id)
    if job is None or job.state in TERMINAL_JOB_STATES:
        return None
    if job.cancel_requested:
        job.state, job.finished_at = JobState.cancelled, utcnow()
        session.commit()
        return None
    now = utcnow()
    job.state, job.started_at, job.heartbeat_at = JobState.running, job.started_at or now, now
    job.worker, job.attempts = worker, job.attempts + 1
    job.error = job.error_detail = None
    session.commit()
    return job


def record_progress(session: Session, job_id: int, done: int, total: int) -> bool:
    """Progress and a heartbeat; returns whether a cancel was requested."""
    session.execute(update(DatasetJob).where(DatasetJob.id == job_id).values(done=done, total=total,
                                                                              heartbeat_at=utcnow()))
    cancel = session.scalar(select(DatasetJob.cancel_requested).where(DatasetJob.id == job_id))
    session.commit()
    return bool(cancel)


def beat(session: Session, job_id: int) -> None:
    session.execute(update(DatasetJob).where(DatasetJob.id == job_id, DatasetJob.state == JobState.running)
                    .values(heartbeat_at=utcnow()))
    session.commit()


def finish_job(session: Session, job_id: int, *, cancelled: bool, result: dict[str, Any] | None) -> None:
    job = get_job(session, job_id)
    job.state = JobState.cancelled if cancelled else JobState.succeeded
    job.finished_at = utcnow()
    job.result = result
    session.commit()


def fail_job(session: Session, job_id: int, error: str, detail: str | None = None) -> None:
    session.rollback()
    job = session.get(DatasetJob, job_id)
    if job is None:
        return
    job.state, job.finished_at = JobState.failed, utcnow()
    job.error, job.error_detail = error, detail
    session.commit()
