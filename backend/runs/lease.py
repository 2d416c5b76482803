"""What a worker holding a run's lease calls: claim the run, record its epochs (metric points
written idempotently), its stages and its info with a heartbeat, then finish, fail, or give it
back on shutdown. The lease conditions are backend/lifecycle/lease.py's, shared with dataset
jobs: with `worker` named, a worker that lost the run gets LeaseLost and writes nothing."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..db import utcnow
from ..lifecycle import lease
from ..lifecycle.lease import Claim, LeaseLost  # noqa: F401  (the worker catches LeaseLost from here)
from .models import ConfusionMatrix, MetricPoint, Run
from .predictions import pack_labels


def claim_run(session: Session, run_id: int, worker: str, **claim_options) -> Claim:
    """Take the run for `worker`, or say why not (lifecycle.lease.claim)."""
    return lease.claim(session, Run, run_id, worker, **claim_options)


def start_run(session: Session, run_id: int, worker: str, **claim_options) -> Run | None:
    """The run, now running on `worker`; None when it must not run (see claim_run)."""
    return claim_run(session, run_id, worker, **claim_options).row


# Metric points are written with one cached statement per dialect, executed for many rows:
# the worker's write path is hot (every epoch of every run), and building a new multi-row
# INSERT each time cost more than the database did.
_POINT_INSERTS = {
    name: dialect.insert(MetricPoint).on_conflict_do_nothing(index_elements=["run_id", "epoch", "name"])
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def record_points(session: Session, run_id: int, epoch: int, metrics: Mapping[str, float],
                  worker: str | None = None, **run_values) -> bool:
    """Write points (idempotently) and a heartbeat in one transaction; returns whether a
    cancel was requested."""
    cancel = lease.hold(session, Run, run_id, worker, **run_values)
    now = utcnow()
    rows = [{"run_id": run_id, "epoch": epoch, "name": name, "value": _finite_or_none(value), "recorded_at": now}
            for name, value in metrics.items()]
    if rows:
        connection = session.connection()
        insert = _POINT_INSERTS.get(connection.dialect.name)
        if insert is None:
            raise NotImplementedError(f"metric points need an insert-or-ignore for {connection.dialect.name}")
        connection.execute(insert, rows)
    session.commit()
    return bool(cancel)


def record_epoch(session: Session, run_id: int, epoch: int, metrics: Mapping[str, float],
                 worker: str | None = None) -> bool:
    """One finished epoch: its points, the progress and a heartbeat, committed together.
    Returns whether a cancel was requested."""
    return record_points(session, run_id, epoch, metrics, worker, epochs_completed=epoch)


def record_stage(session: Session, run_id: int, progress: Mapping, worker: str | None = None) -> bool:
    """A stage before training (preprocessing) in run.info, with a heartbeat; returns whether
    a cancel was requested."""
    return lease.record(session, Run, run_id, worker, info=dict(progress))


def record_info(session: Session, run_id: int, info: Mapping, worker: str | None = None) -> None:
    lease.record(session, Run, run_id, worker, info=dict(info))


def finish_run(session: Session, run_id: int, *, cancelled: bool, test_accuracy: float | None,
               val_accuracy: float | None, best_epoch: int | None, classes: list[str],
               confusion: list[list[int]] | None, info: Mapping, worker: str | None = None,
               test_predictions: Sequence[int] | None = None, test_labels: Sequence[int] | None = None) -> None:
    """Store the final result. A cancelled run keeps its metrics and its best epoch so far
    (none when it was cancelled before its first epoch). The test predictions, kept with the
    confusion matrix, let methods be compared test sample by test sample."""
    kept = test_predictions is not None and test_labels is not None
    matrix = ([ConfusionMatrix(run_id=run_id, epoch=best_epoch, classes=list(classes), counts=confusion,
                               test_predictions=pack_labels(test_predictions, len(classes)) if kept else None,
                               test_labels=pack_labels(test_labels, len(classes)) if kept else None)]
              if confusion is not None and best_epoch is not None else [])
    lease.finish(session, Run, run_id, worker, cancelled=cancelled, rows=matrix, test_accuracy=test_accuracy,
                 val_accuracy=val_accuracy, best_epoch=best_epoch, info=dict(info))


def fail_run(session: Session, run_id: int, error: str, detail: str | None = None, worker: str | None = None) -> None:
    lease.fail(session, Run, run_id, error, detail, worker)
