"""Runs one queued run: claim it in the database, train, and write back every epoch's points,
a heartbeat, and the final result. Plain code, callable without Celery. The lease — claim,
heartbeat, cancel, retries while the database is down, giving the run back on shutdown — is
worker/lease_holder.py's, shared with dataset jobs; this module adds what is a run's own: the
training callback and where the checkpoint lives."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend.db import utcnow
from backend.runs import lease
from backend.runs.ingest import BatchingWriter, Point, points_of
from backend.runs.artifacts import run_artifact_dir
from backend.runs.models import Run
from backend.settings import Settings

from training.spec import TrainSpec
from training.train import StopReason, TrainingCallback, train

from .lease_holder import Done, Ending, LeaseHolder, execute_leased

log = logging.getLogger("missmod.worker")


class DatabaseRecorder(TrainingCallback):
    """Writes the run's points as they come: per-step points and the progress inside the epoch
    through a batching writer (backend/runs/ingest.py: a batch every FLUSH_INTERVAL seconds),
    and each epoch's points with everything still buffered as soon as the epoch ends, before
    its checkpoint is written, so no point before a checkpoint can be lost. Picks up a cancel
    request in the same transactions. Stops the loop after the epoch's checkpoint when the
    process is asked to shut down (the holder's `stop_requested`)."""

    # Per-step points wait at most this long before they are written (the loss moves on the page).
    FLUSH_INTERVAL = 0.5

    def __init__(self, holder: LeaseHolder):
        self.holder = holder
        self.run_id, self.worker = holder.row_id, holder.worker
        self.steps_per_epoch = 0
        self.points = BatchingWriter(self._write_batch, interval=self.FLUSH_INTERVAL)

    def _write_batch(self, points: list[Point], run_values: dict[str, Any]) -> None:
        self.holder.write_and_check(
            lambda session: lease.record_batch(session, self.run_id, points, self.worker, **run_values))

    def on_start(self, info: dict[str, Any]) -> None:
        self.steps_per_epoch = int(info.get("steps_per_epoch") or 0)
        # A resumed run's progress is the previous attempt's until its first step is logged.
        self.holder.record(info=dict(info), progress=None)

    def on_stage_epoch(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        # Recorded like epochs, under their own metric names (e.g. imputer_y_mse), so they show
        # on the curves without touching the classifier's epoch count.
        self.holder.write_and_check(
            lambda session: lease.record_points(session, self.run_id, epoch, metrics, self.worker))

    def on_stage_progress(self, stage: str, done: int, total: int, details: dict[str, Any]) -> None:
        # Shown on the run page while the stage lasts (run.info.stage); on_start then replaces it.
        if self.holder.progress_due(done, total):
            self.holder.record(info={"stage": stage, "stage_done": done, "stage_total": total, **details})

    def on_step(self, epoch: int, step: int, metrics: dict[str, float], progress: dict[str, Any]) -> None:
        self.points.add(points_of(epoch, step, metrics), progress={**progress, "at": utcnow().isoformat()})

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        # The epoch's points carry the step it ended at; written with every per-step point still
        # buffered, in one transaction, before the loop writes the epoch's checkpoint.
        self.points.add(points_of(epoch, epoch * self.steps_per_epoch, metrics))
        self.points.flush(epochs_completed=epoch)

    def should_stop(self) -> bool:
        return self.holder.should_stop()

    def stop_reason(self) -> StopReason:
        return StopReason.cancelled if self.holder.cancel_requested else StopReason.shutdown


def checkpoint_path(settings: Settings, run_id: int) -> Path:
    """Where a run's checkpoint lives; a redelivered run continues from it."""
    return run_artifact_dir(settings.artifact_dir, run_id) / "checkpoint.pt"


def execute_run(run_id: int, settings: Settings, worker: str | None = None,
                stop_requested: Callable[[], bool] = lambda: False) -> str:
    """`worker` names who runs it (Celery node name and pid). Returns what happened."""

    def work(run: Run, holder: LeaseHolder) -> Done:
        spec = TrainSpec.model_validate(dict(run.spec))
        log.info("run %s: %s", run_id, spec.model_dump())
        result = train(spec, DatabaseRecorder(holder), data_dir=settings.data_dir,
                       checkpoint_path=checkpoint_path(settings, run_id), video=settings.video_options())
        def store(session, cancelled: bool) -> None:
            lease.finish_run(session, run_id, cancelled=cancelled, test_accuracy=result.test_accuracy,
                             val_accuracy=result.val_accuracy, best_epoch=result.best_epoch, classes=result.classes,
                             confusion=result.confusion_matrix, info=result.info, worker=holder.worker)
            log.info("run %s: test accuracy %s at epoch %s", run_id, result.test_accuracy, result.best_epoch)

        return Done(Ending(result.stopped.value), store, reached=f"after epoch {result.epochs_completed} "
                                                                     "(checkpoint kept)")

    return execute_leased(Run, run_id, settings, work, worker, stop_requested)
