"""What a worker holding a run's lease writes that is a run's own: its metric points (written
idempotently) with a heartbeat and the progress, and its result with the confusion matrix and
the test predictions. Claiming, failing and giving the run back are the lease's own, shared with
dataset jobs (backend/lifecycle/lease.py): with `worker` named, a worker that lost the run gets
LeaseLost and writes nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy.orm import Session

from ..lifecycle import lease
from . import ingest
from .models import ConfusionMatrix, Run
from .predictions import pack_labels


def record_batch(session: Session, run_id: int, points: Sequence[ingest.Point], worker: str | None = None,
                 **run_values) -> bool:
    """Write a batch of points (insert-or-ignore on (run, epoch, step, name): exactly once,
    backend/runs/ingest.py) and a heartbeat with `run_values` (the progress) in one
    transaction; returns whether a cancel was requested."""
    cancel = lease.hold(session, Run, run_id, worker, **run_values)
    ingest.insert_points(session.connection(), run_id, points)
    session.commit()
    return bool(cancel)


def record_points(session: Session, run_id: int, epoch: int, metrics: Mapping[str, float],
                  worker: str | None = None, *, step: int = 0, **run_values) -> bool:
    """Points of one epoch (at global step `step`) and a heartbeat in one transaction; returns
    whether a cancel was requested."""
    return record_batch(session, run_id, ingest.points_of(epoch, step, metrics), worker, **run_values)


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
