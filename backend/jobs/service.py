"""What the API calls about dataset jobs, as plain functions over a session. Their life cycle is
the one runs have (backend/lifecycle): a worker holds a job under a lease
(worker/lease_holder.py) and the reconcile step recovers it (backend/reconcile.py)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from training.datasets import UnknownDatasetError, dataset_info

from .. import pagination
from ..db import utcnow
from ..lifecycle import api as lifecycle
from ..lifecycle.models import State
from ..queue import WorkQueue
from .models import DatasetJob


class JobNotFound(LookupError):
    pass


class DatasetNotFound(LookupError):
    """args: the dataset's name."""


class NotAVideoDataset(RuntimeError):
    """Only a raw video dataset, one that can be used, is preprocessed or has features extracted."""


def check_video_dataset(name: str, data_dir, video) -> None:
    """DatasetNotFound or NotAVideoDataset unless `name` is a raw video dataset that can be used."""
    try:
        info = dataset_info(name, data_dir, video)
    except UnknownDatasetError:
        raise DatasetNotFound(name) from None
    if info.source != "video":
        raise NotAVideoDataset(f"dataset {name!r} is not a raw video dataset; only ravdess and enterface05 are "
                               f"preprocessed")
    if info.error:
        raise NotAVideoDataset(f"dataset {name!r} cannot be used: {info.error}")


def active_job(session: Session, kind: str, dataset: str, params: dict[str, Any]) -> DatasetJob | None:
    """A queued or running job doing the same thing, which a new request joins instead."""
    jobs = session.scalars(select(DatasetJob).where(
        DatasetJob.kind == kind, DatasetJob.dataset == dataset,
        DatasetJob.state.in_([State.queued, State.running]))).all()
    return next((job for job in jobs if job.params == params), None)


def create_job(session: Session, kind: str, dataset: str, params: dict[str, Any], queue: WorkQueue) -> DatasetJob:
    """Commit, then send (as for runs); if the broker cannot be reached, the job stays queued,
    awaiting the broker, and the reconcile step sends it once it is back."""
    now = utcnow()
    job = DatasetJob(kind=kind, dataset=dataset, params=params, state=State.queued, created_at=now,
                     awaiting_broker_since=now)
    session.add(job)
    session.commit()
    lifecycle.enqueue_committed(session, DatasetJob, [job], queue.send_job)
    return job


def get_job(session: Session, job_id: int) -> DatasetJob:
    job = session.get(DatasetJob, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def list_jobs(session: Session, dataset: str | None = None, limit: int = 50,
              cursor: str | None = None) -> tuple[list[DatasetJob], str | None]:
    """A page of jobs, newest first, and the cursor of the next page (None at the end;
    backend/pagination.py)."""
    query = select(DatasetJob)
    if dataset:
        query = query.where(DatasetJob.dataset == dataset)
    if cursor:
        _, job_id = pagination.decode(cursor, pagination.NEWEST_FIRST)
        query = query.where(DatasetJob.id < job_id)
    jobs = list(session.scalars(query.order_by(DatasetJob.id.desc()).limit(limit + 1)))
    if len(jobs) <= limit:
        return jobs, None
    return jobs[:limit], pagination.encode(pagination.NEWEST_FIRST, jobs[limit - 1].id, jobs[limit - 1].id)


def request_cancel(session: Session, job_id: int) -> DatasetJob:
    """At once if queued; after the current clip (or batch) if running: finished clips are kept."""
    return lifecycle.request_cancel(session, get_job(session, job_id))
