"""The live stream of a dataset job: the hub's `job` topic (backend/live.py).

Events: `job` (the job whenever it changes: its state, progress and result; the event id is its
digest), `end` (finished, nothing more to send), `gone` (no such job any more). A subscriber's
cursor is the digest of the job as it was last sent.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..lifecycle.models import TERMINAL_STATES
from ..live import Delivery, Topic, digest, encode
from .models import DatasetJob
from .schemas import JobOut


class JobReading(NamedTuple):
    job_id: int
    body: str | None  # None: the job is gone
    token: str | None
    state: str | None


class JobTopic(Topic):
    kind = "job"

    def read(self, session: Session, wanted: dict[Hashable, tuple[Hashable, Any]]) -> dict[Hashable, JobReading]:
        jobs = {job.id: job for job in session.scalars(select(DatasetJob).where(DatasetJob.id.in_(list(wanted))))}
        found = {}
        for job_id in wanted:
            job = jobs.get(job_id)
            body = JobOut.model_validate(job).model_dump_json() if job is not None else None
            found[job_id] = JobReading(job_id, body, body and digest(body), job and job.state)
        return found

    def deliver(self, reading: JobReading, cursor: Hashable) -> Delivery:
        if reading.body is None:
            return Delivery(encode("gone", json.dumps({"job_id": reading.job_id})), cursor, ended=True)
        ended = reading.state in TERMINAL_STATES
        parts = [encode("job", reading.body, reading.token)] if cursor != reading.token else []
        if ended:
            parts.append(encode("end", json.dumps({"state": reading.state})))
        return Delivery(b"".join(parts), reading.token, ended)
