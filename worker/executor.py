"""Runs one queued run: claim it in the database, train, and write back every epoch's points,
a heartbeat, and the final result. Plain code, callable without Celery. The lease — claim,
heartbeat, cancel, retries while the database is down, giving the run back on shutdown — is
worker/lease_holder.py's, shared with dataset jobs; this module adds what is a run's own: the
training callback and where the checkpoint lives."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from backend.runs import lease
from backend.runs.artifacts import RunCheckpoints
from backend.runs.models import Run
from backend.settings import Settings

from training.datasets import configure_features
from training.spec import TrainSpec
from training.train import StopReason, TrainingAborted, TrainingCallback, train

from .artifacts import fetch_dataset, run_checkpoints, save_confusion
from .lease_holder import Abandoned, Done, Ending, LeaseHolder, execute_leased

log = logging.getLogger("missmod.worker")


class DatabaseRecorder(TrainingCallback):
    """Commits each epoch's metrics as soon as it ends, so the dashboard can show them, and
    picks up a cancel request in the same transaction. Stops the loop after the epoch's
    checkpoint when the process is asked to shut down (the holder's `stop_requested`)."""

    def __init__(self, holder: LeaseHolder):
        self.holder = holder
        self.run_id, self.worker = holder.row_id, holder.worker

    def on_start(self, info: dict[str, Any]) -> None:
        self.holder.record(info=dict(info))

    def on_stage_epoch(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        # Recorded like epochs, under their own metric names (e.g. imputer_y_mse), so they show
        # on the curves without touching the classifier's epoch count.
        self.holder.write_and_check(
            lambda session: lease.record_points(session, self.run_id, epoch, metrics, self.worker))

    def on_stage_progress(self, stage: str, done: int, total: int, details: dict[str, Any]) -> None:
        # Shown on the run page while the stage lasts (run.info.stage); on_start then replaces it.
        if self.holder.progress_due(done, total):
            self.holder.record(info={"stage": stage, "stage_done": done, "stage_total": total, **details})

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.holder.write_and_check(
            lambda session: lease.record_epoch(session, self.run_id, epoch, metrics, self.worker))

    def should_stop(self) -> bool:
        return self.holder.should_stop()

    def should_abort(self) -> bool:
        # The heartbeat found the run no longer this worker's (deleted, or taken for dead): stop
        # within a heartbeat, not at the end of a long epoch.
        return self.holder.lost.is_set()

    def stop_reason(self) -> StopReason:
        return StopReason.cancelled if self.holder.cancel_requested else StopReason.shutdown


def checkpoint_path(settings: Settings, run_id: int, attempt: int = 1, resume_after_attempt: int = 0) -> RunCheckpoints:
    """Where this attempt of a run writes its checkpoints, in the shared artifact store; a
    redelivered run (on any host) continues from the newest earlier attempt's."""
    return run_checkpoints(settings, run_id, attempt, resume_after_attempt)


def execute_run(run_id: int, settings: Settings, worker: str | None = None,
                stop_requested: Callable[[], bool] = lambda: False) -> str:
    """`worker` names who runs it (Celery node name and pid). Returns what happened."""
    configure_features(settings.feature_limits())

    def work(run: Run, holder: LeaseHolder) -> Done:
        spec = TrainSpec.model_validate(dict(run.spec))
        log.info("run %s: %s", run_id, spec.model_dump())
        fetch_dataset(settings, holder.sessions, spec.dataset)  # made by a job on another host: fetched once
        checkpoints = checkpoint_path(settings, run_id, run.attempts, run.resume_after_attempt)
        try:
            result = train(spec, DatabaseRecorder(holder), data_dir=settings.data_dir,
                           checkpoint_path=checkpoints, video=settings.video_options())
        except TrainingAborted:
            raise Abandoned(f"run {run_id}") from None
        def store(session, cancelled: bool) -> None:
            lease.finish_run(session, run_id, cancelled=cancelled, test_accuracy=result.test_accuracy,
                             val_accuracy=result.val_accuracy, best_epoch=result.best_epoch, classes=result.classes,
                             confusion=result.confusion_matrix, info=result.info, worker=holder.worker,
                             test_predictions=result.test_predictions, test_labels=result.test_labels)
            log.info("run %s: test accuracy %s at epoch %s", run_id, result.test_accuracy, result.best_epoch)
            save_confusion(settings, run_id, result.best_epoch, result.classes, result.confusion_matrix)

        return Done(Ending(result.stopped.value), store, reached=f"after epoch {result.epochs_completed} "
                                                                     "(checkpoint kept)")

    return execute_leased(Run, run_id, settings, work, worker, stop_requested)
