"""Runs one queued run: claim it in the database, train, and write back every epoch's points,
a heartbeat, and the final result. Plain code, callable without Celery. The lease — claim,
heartbeat, cancel, retries while the database is down, giving the run back on shutdown — is
worker/lease_holder.py's, shared with dataset jobs; this module adds what is a run's own: the
training callback (with the run's system metrics), where the checkpoint lives, and what a run
that runs out of memory beside other runs does: it goes back to the queue for a slot of its own."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from backend import notify
from backend.db import session_factory, utcnow
from backend.lifecycle.lease import LeaseLost
from backend.queue import WorkQueue
from backend.runs import outcomes, recording
from backend.runs import service as runs_service
from backend.runs.artifacts import RunBundle, RunCheckpoints
from backend.runs.ingest import BatchingWriter, Point, points_of
from backend.runs.models import Run
from backend.runs.system import record_system_points
from backend.settings import Settings
from backend.studies import outcomes as study_outcomes, service as studies
from backend.sweeps import outcomes as sweep_outcomes
from backend.workers import service as workers

from training import reproducibility
from training.datasets import configure_features
from training.spec import TrainSpec
from training.train import StopReason, TrainingAborted, TrainingCallback, train

from . import slots
from .artifacts import fetch_dataset, run_checkpoints, save_confusion
from .lease_holder import Done, Executed, LeaseHolder, execute_leased
from .system_metrics import SystemSampler, visible_gpu
from .write_behind import WriteBehind

log = logging.getLogger("missmod.worker")

# The runs this worker ends may finish their sweep, or move their study on (backend/runs/outcomes.py
# calls who registered).
sweep_outcomes.listen()
study_outcomes.listen()


class DatabaseRecorder(TrainingCallback):
    """Writes the run's points as they come: per-step points and the progress inside the epoch
    through a batching writer (backend/runs/ingest.py: a batch every FLUSH_INTERVAL seconds),
    and each epoch's points with everything still buffered as soon as the epoch ends. The
    writes are done in order on a thread of their own (worker/write_behind.py), and all of them
    are committed before a checkpoint is written, so no point before a checkpoint can be lost.
    Picks up a cancel request in the same transactions. Stops the loop after the epoch when the
    process is asked to shut down (the holder's `stop_requested`). Use it as a context manager
    around the training: leaving it waits for the last writes."""

    # Per-step points wait at most this long before they are written (the loss moves on the page).
    FLUSH_INTERVAL = 0.5

    def __init__(self, holder: LeaseHolder, system: SystemSampler | None = None):
        self.holder = holder
        self.run_id, self.worker = holder.row_id, holder.worker
        self.system = system
        self.steps_per_epoch = 0
        self.writes = WriteBehind(f"writes-of-run-{holder.row_id}")
        self.points = BatchingWriter(self._write_batch, interval=self.FLUSH_INTERVAL)

    def __enter__(self) -> "DatabaseRecorder":
        self.writes.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.writes.__exit__(*exc)

    def _write_batch(self, points: list[Point], run_values: dict[str, Any]) -> None:
        self.writes.submit(lambda: self.holder.write_and_check(
            lambda session: recording.record_batch(session, self.run_id, points, self.worker, **run_values)))

    def on_start(self, info: dict[str, Any]) -> None:
        self.steps_per_epoch = int(info.get("steps_per_epoch") or 0)
        # A resumed run's progress is the previous attempt's until its first step is logged. The
        # reproducibility record is this attempt's: a run resumed elsewhere says where it ended
        # (taken on the writes' thread: it asks git, which the training need not wait for).
        info = dict(info)
        self.writes.submit(lambda: self.holder.record(
            info=info, progress=None, environment=reproducibility.record(info.get("device"), info.get("method"))))

    def on_stage_epoch(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        # Recorded like epochs, under their own metric names (e.g. imputer_y_mse), so they show
        # on the curves without touching the classifier's epoch count.
        metrics = dict(metrics)
        self.writes.submit(lambda: self.holder.write_and_check(
            lambda session: recording.record_points(session, self.run_id, epoch, metrics, self.worker)))

    def on_stage_progress(self, stage: str, done: int, total: int, details: dict[str, Any]) -> None:
        # Shown on the run page while the stage lasts (run.info.stage); on_start then replaces it.
        if self.holder.progress_due(done, total):
            info = {"stage": stage, "stage_done": done, "stage_total": total, **details}
            self.writes.submit(lambda: self.holder.record(info=info))

    def on_step(self, epoch: int, step: int, metrics: dict[str, float], progress: dict[str, Any]) -> None:
        self.points.add(points_of(epoch, step, metrics), progress={**progress, "at": utcnow().isoformat()})

    def on_epoch_trained(self, epoch: int, samples: int, seconds: float) -> None:
        if self.system is not None:
            self.system.epoch_trained(samples, seconds)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        # The epoch's points carry the step it ended at; written with every per-step point still
        # buffered, in one transaction (committed before any later checkpoint: before_checkpoint).
        self.points.add(points_of(epoch, epoch * self.steps_per_epoch, metrics))
        self.points.flush(epochs_completed=epoch)
        if self.system is not None:
            figures = self.system.epoch_figures()  # the epoch's window ends now, not when written
            self.writes.submit(lambda: self._write_system_points(epoch, figures))

    def _write_system_points(self, epoch: int, figures: dict[str, float | None]) -> None:
        try:  # after the epoch's points: a lost sample must never cost a run its metrics
            with self.holder.sessions() as session:
                record_system_points(session, self.run_id, epoch, figures)
        except Exception as error:
            log.warning("system metrics of run %s, epoch %s, not recorded: %s", self.run_id, epoch, error)

    def before_checkpoint(self, epoch: int) -> None:
        self.writes.wait()

    def should_stop(self) -> bool:
        # The cancel flag as the latest committed write read it.
        return self.holder.should_stop()

    def should_abort(self) -> bool:
        self.writes.raise_if_failed()  # a write found the lease lost, or the database gone for good
        # The heartbeat found the run no longer this worker's (deleted, or taken for dead): stop
        # within a heartbeat, not at the end of a long epoch.
        return self.holder.lease_lost.is_set()

    def stop_reason(self) -> StopReason:
        return self.holder.stop_reason()


class TrialRecorder(DatabaseRecorder):
    """A study's trial (backend/studies): after each epoch's points, its validation accuracy goes to
    the study, whose pruner may stop the trial there; it then ends like a cancelled run (its points
    kept), at once, and its slot takes the study's next trial."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        super().on_epoch_end(epoch, metrics)
        self.writes.wait()  # the pruner's answer decides whether there is a next epoch
        value = metrics.get("val_accuracy")
        if self.holder.write(lambda session: studies.report_epoch(session, self.run_id, epoch, value)):
            self.holder.cancel_requested = True  # the study set the run's cancel flag too


def recorder_for(holder: LeaseHolder, system: SystemSampler | None) -> DatabaseRecorder:
    is_trial = holder.write(lambda session: studies.trial_of_run(session, holder.row_id) is not None)
    return (TrialRecorder if is_trial else DatabaseRecorder)(holder, system)


def checkpoint_path(settings: Settings, run_id: int, attempt: int = 1, resume_after_attempt: int = 0) -> RunCheckpoints:
    """Where this attempt of a run writes its checkpoints, in the shared artifact store; a
    redelivered run (on any host) continues from the newest earlier attempt's."""
    return run_checkpoints(settings, run_id, attempt, resume_after_attempt)


def _queue_again_on_its_own_slot(settings: Settings, holder: LeaseHolder, error: str) -> Done:
    """Out of memory beside other runs: back to the queue marked `needs_own_slot`, and its id sent
    now as any committed run's is (the reconcile step sends it if the broker cannot be reached);
    it trains next with the GPU to itself."""
    run_id = holder.row_id
    log.warning("run %s ran out of memory while sharing its GPU; queued again for a slot of its own", run_id)
    slots.release_device_memory()
    if holder.write(lambda session: workers.requeue_on_own_slot(session, run_id, holder.worker, error)):
        queue = WorkQueue(settings)
        try:
            holder.write(lambda session: runs_service.enqueue_committed(session, [session.get(Run, run_id)], queue))
        finally:
            queue.close()
    # Given back: the lease holder finds the run no longer running here and leaves it queued.
    return Done(StopReason.shutdown, lambda session, cancelled: None, reached="out of memory beside other runs")


def execute_run(run_id: int, settings: Settings, worker: str | None = None,
                stop_requested: Callable[[], bool] = lambda: False) -> Executed:
    """`worker` names who runs it (Celery node name and pid). Returns what happened."""
    configure_features(settings.feature_limits())

    def work(run: Run, holder: LeaseHolder) -> Done:
        spec = TrainSpec.model_validate(dict(run.spec))
        log.info("run %s: %s", run_id, spec.model_dump())
        share = slots.memory_share(settings.runs_per_gpu, run.needs_own_slot)
        fetch_dataset(settings, holder.sessions, spec.dataset)  # made by a job on another host: fetched once
        checkpoints = checkpoint_path(settings, run_id, run.attempts, run.resume_after_attempt)
        try:
            with SystemSampler(settings.system_metrics_interval, visible_gpu(), slots.THREADS_PER_RUN) as system:
                slots.limit_device_memory(share, spec.device)
                with recorder_for(holder, system) as recorder:  # leaving it waits for the last writes
                    result = train(spec, recorder, data_dir=settings.data_dir, checkpoint_path=checkpoints,
                                   video=settings.video_options(), checkpoint_every_seconds=settings.checkpoint_interval,
                                   bundle_path=RunBundle(settings, run_id))
        except TrainingAborted:  # asked by should_abort: the heartbeat found the lease lost
            raise LeaseLost(f"run {run_id} is no longer held by {holder.worker}") from None
        except Exception as error:
            if not slots.is_out_of_memory(error):
                raise
            if share >= 1.0:
                raise RuntimeError(f"{type(error).__name__}: {error} (out of memory with no other run beside it: "
                                   f"lower batch_size, or use a larger GPU)") from error
            out_of_memory = f"{type(error).__name__}: {error}"
        else:
            out_of_memory = None
        if out_of_memory is not None:  # out of the except block: the failed step's tensors can be freed
            return _queue_again_on_its_own_slot(settings, holder, out_of_memory)
        def store(session, cancelled: bool) -> None:
            recording.finish_run(session, run_id, cancelled=cancelled, test_accuracy=result.test_accuracy,
                             val_accuracy=result.val_accuracy, best_epoch=result.best_epoch, classes=result.classes,
                             confusion=result.confusion_matrix, info=result.info, worker=holder.worker,
                             test_predictions=result.test_predictions, test_labels=result.test_labels)
            log.info("run %s: test accuracy %s at epoch %s", run_id, result.test_accuracy, result.best_epoch)
            save_confusion(settings, run_id, result.best_epoch, result.classes, result.confusion_matrix)

        return Done(result.stopped, store, reached=f"after epoch {result.epochs_completed} (checkpoint kept)")

    executed = execute_leased(Run, run_id, settings, work, worker, stop_requested)
    if executed.ended_the_row:
        announce_end(settings, run_id)
    return executed


def announce_end(settings: Settings, run_id: int) -> None:
    """After the run's end is committed: its sweep may be finished, and the webhook hears of a
    failure or a finished sweep (backend/runs/outcomes.py). Sent before this process (one per
    run) ends, within a bound; nothing here can fail the run."""
    try:
        with session_factory(settings.database_url)() as session:
            outcomes.announce_ended(session, settings, [run_id])
        notify.flush(settings)
    except Exception as error:
        log.warning("run %s: could not announce its end: %s", run_id, error)
