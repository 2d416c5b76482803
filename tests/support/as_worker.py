"""Tests that play the worker on a run, through the real paths: the lease's claim and fail
(backend/lifecycle/lease.py) and the run's own writes (backend/runs/recording.py)."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.orm import Session

from backend.lifecycle import lease
from backend.runs import recording
from backend.runs.models import Run


def start_run(session: Session, run_id: int, worker: str) -> Run | None:
    """The run, now running on `worker`; None when the claim did not take it."""
    return lease.claim(session, Run, run_id, worker).row


def record_epoch(session: Session, run_id: int, epoch: int, metrics: Mapping[str, float],
                 worker: str | None = None, *, step: int = 0) -> bool:
    """One finished epoch's points, its count and a heartbeat, as the worker commits them at an
    epoch's end; returns whether a cancel was requested."""
    return recording.record_points(session, run_id, epoch, metrics, worker, step=step, epochs_completed=epoch)


def fail_run(session: Session, run_id: int, error: str, detail: str | None = None, worker: str | None = None) -> None:
    lease.fail(session, Run, run_id, error, detail, worker)
