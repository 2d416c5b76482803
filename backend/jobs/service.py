"""What the API calls about dataset jobs, as plain functions over a session. Their life cycle is
the one runs have (backend/lifecycle): a worker holds a job under a lease
(worker/lease_holder.py) and the reconcile step recovers it (backend/reconcile.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import utcnow
from ..lifecycle import api as lifecycle
from ..lifecycle.api import AlreadyFinished as JobFinished  # noqa: F401  (raised from here)
from ..lifecycle.models import State
from ..queue import RunQueue
from .models import DatasetJob


class JobNotFound(LookupError):
    pass


def active_job(session: Session, kind: str, dataset: str, params: dict[str, Any]) -> DatasetJob | None:
    """A queued or running job doing the same thing, which a new request joins instead."""
    jobs = session.scalars(select(DatasetJob).where(
        DatasetJob.kind == kind, DatasetJob.dataset == dataset,
        DatasetJob.state.in_([State.queued, State.running]))).all()
    return next((job for job in jobs if job.params == params), None)


def create_job(session: Session, kind: str, dataset: str, params: dict[str, Any], queue: RunQueue) -> DatasetJob:
    """Commit, then send (as for runs); if the broker cannot be reached, the job stays queued,
    awaiting the broker, and the reconcile step sends it once it is back."""
    now = utcnow()
    job = DatasetJob(kind=kind, dataset=dataset, params=params, state=State.queued, created_at=now,
                     awaiting_broker_since=now)
    session.add(job)
    session.commit()
    lifecycle.enqueue_committed(session, DatasetJob, [job], queue.enqueue_job)
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
    """At once if queued; after the current clip (or batch) if running: finished clips are kept."""
    return lifecycle.request_cancel(session, get_job(session, job_id))
