"""Runs one queued run: claim it in the database, train, and write back every epoch's points,
a heartbeat, and the final result. Plain code, callable without Celery.

The worker holds a run like a lease: its claim, heartbeats and writes are all conditional on
still being the run's holder. If it was taken for dead (no heartbeat for HEARTBEAT_TIMEOUT) and
the run went to another worker, its next write raises LeaseLost and it stops without touching
the run — before writing another checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import sessionmaker

from backend.db import session_factory
from backend.runs import service
from backend.runs.artifacts import RunCheckpoints
from backend.settings import Settings

from training.spec import TrainSpec
from training.train import TrainingCallback, train

from .artifacts import fetch_dataset, run_checkpoints, save_confusion

log = logging.getLogger("missmod.worker")

# The database cannot be reached (down, restarting, network): transient, unlike a failing run.
DATABASE_ERRORS = (OperationalError, InterfaceError)


class DatabaseUnavailable(RuntimeError):
    """The run could not be claimed because the database is unreachable."""


def retry_while_database_down(action: Callable[[], Any], patience: float) -> Any:
    """Run `action`, retrying for up to `patience` seconds while the database is unreachable, so a
    database restart pauses a run at the end of its epoch instead of ending it."""
    deadline = time.monotonic() + patience
    pause = 0.5
    while True:
        try:
            return action()
        except DATABASE_ERRORS as error:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("database unreachable (%s); retrying in %.1f s", type(error).__name__, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


class DatabaseRecorder(TrainingCallback):
    """Commits each epoch's metrics as soon as it ends, so the dashboard can show them, and
    picks up a cancel request in the same transaction. Stops the loop after the epoch's
    checkpoint when the process is asked to shut down (`stop_requested`)."""

    # A stage's progress (clips preprocessed) is written at most this often, and at its end.
    STAGE_PROGRESS_INTERVAL = 0.5

    def __init__(self, sessions: sessionmaker, run_id: int, worker: str | None = None,
                 stop_requested: Callable[[], bool] = lambda: False, database_patience: float = 0.0):
        self.sessions = sessions
        self.run_id = run_id
        self.worker = worker
        self.stop_requested = stop_requested
        self.database_patience = database_patience
        self.cancel_requested = False
        self._stage_written_at = 0.0

    def _write(self, write: Callable[[Any], Any]) -> Any:
        def attempt():
            with self.sessions() as session:
                return write(session)

        return retry_while_database_down(attempt, self.database_patience)

    def on_start(self, info: dict[str, Any]) -> None:
        self._write(lambda session: service.record_info(session, self.run_id, info, self.worker))

    def on_stage_epoch(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        # Recorded like epochs, under their own metric names (e.g. imputer_y_mse), so they show
        # on the curves without touching the classifier's epoch count.
        self.cancel_requested = self._write(
            lambda session: service.record_points(session, self.run_id, epoch, metrics, self.worker))

    def on_stage_progress(self, stage: str, done: int, total: int, details: dict[str, Any]) -> None:
        # Shown on the run page while the stage lasts (run.info.stage); on_start then replaces it.
        now = time.monotonic()
        if done < total and now - self._stage_written_at < self.STAGE_PROGRESS_INTERVAL:
            return
        self._stage_written_at = now
        progress = {"stage": stage, "stage_done": done, "stage_total": total, **details}
        self.cancel_requested = self._write(
            lambda session: service.record_stage(session, self.run_id, progress, self.worker))

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.cancel_requested = self._write(
            lambda session: service.record_epoch(session, self.run_id, epoch, metrics, self.worker))

    def should_stop(self) -> bool:
        return self.cancel_requested or self.stop_requested()


class Heartbeat:
    """Marks the run alive every `interval` seconds from a thread, so a long epoch still
    shows a live worker, and a dead one shows a stale heartbeat."""

    def __init__(self, sessions: sessionmaker, run_id: int, interval: float, worker: str | None = None):
        self.sessions, self.run_id, self.interval, self.worker = sessions, run_id, interval, worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run_id}", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.sessions() as session:
                    if not service.beat(session, self.run_id, self.worker):
                        log.warning("run %s is no longer held by %s; it stops at the end of this epoch",
                                    self.run_id, self.worker)
                        return
            except Exception as error:  # a missed beat is not fatal; the next one may land
                log.warning("heartbeat of run %s failed: %s", self.run_id, error)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def checkpoint_path(settings: Settings, run_id: int, attempt: int = 1, resume_after_attempt: int = 0) -> RunCheckpoints:
    """Where this attempt of a run writes its checkpoints, in the shared artifact store; a
    redelivered run (on any host) continues from the newest earlier attempt's."""
    return run_checkpoints(settings, run_id, attempt, resume_after_attempt)


def holder_is_dead_here(me: str) -> Callable[[str], bool]:
    """For a claim: whether a run's holder ("node/pid") is a process of this worker node that is
    gone. A node runs one task at a time, so a run it still holds while it receives that run's id
    again was held by a pool process that died (and whose id came back, reject-on-worker-lost);
    the run can resume at once instead of waiting for its heartbeat to go stale."""
    my_node, _, _ = me.rpartition("/")

    def is_dead(holder: str) -> bool:
        node, _, pid = holder.rpartition("/")
        if node != my_node or not pid.isdigit():
            return False
        if int(pid) == os.getpid():
            return True  # this very process, which is now between runs
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    return is_dead


def execute_run(run_id: int, settings: Settings, worker: str | None = None,
                stop_requested: Callable[[], bool] = lambda: False) -> str:
    """`worker` names who runs it (Celery node name and pid); the host and pid by default.
    Returns what happened, for the log and the tests."""
    worker = worker or f"{socket.gethostname()}/{os.getpid()}"
    sessions = session_factory(settings.database_url)
    try:
        with sessions() as session:
            claim = service.claim_run(session, run_id, worker, heartbeat_timeout=settings.heartbeat_timeout,
                                      max_retries=settings.run_max_retries, holder_is_dead=holder_is_dead_here(worker))
            spec_data = dict(claim.run.spec) if claim.run is not None else None
            attempt = (claim.run.attempts, claim.run.resume_after_attempt) if claim.run is not None else (0, 0)
    except DATABASE_ERRORS as error:
        raise DatabaseUnavailable(f"{type(error).__name__}: {error.orig if hasattr(error, 'orig') else error}") from None
    if claim.run is None:
        log.info("run %s not started here: %s", run_id, claim.reason)
        return f"skipped: {claim.reason}"

    log.info("run %s %s on %s: %s", run_id, claim.reason, worker, spec_data)
    recorder = DatabaseRecorder(sessions, run_id, worker, stop_requested, database_patience=settings.heartbeat_timeout)
    try:
        spec = TrainSpec.model_validate(spec_data)
        with Heartbeat(sessions, run_id, settings.heartbeat_interval, worker):
            fetch_dataset(settings, sessions, spec.dataset)  # made by a job on another host: fetched once
            result = train(spec, recorder, data_dir=settings.data_dir,
                           checkpoint_path=checkpoint_path(settings, run_id, *attempt), video=settings.video_options())
    except service.LeaseLost:
        log.warning("run %s was given to another worker while this one (%s) was taken for dead; stopped without "
                    "writing", run_id, worker)
        return "lease lost"
    except DATABASE_ERRORS as error:
        # Its heartbeat stops with it: the reconcile step queues the run again once the database is back.
        log.error("run %s stopped: the database stayed unreachable (%s)", run_id, error)
        return "database unreachable"
    except Exception as error:
        log.exception("run %s failed", run_id)
        try:
            with sessions() as session:
                service.fail_run(session, run_id, f"{type(error).__name__}: {error}", traceback.format_exc(), worker)
        except DATABASE_ERRORS:
            log.error("run %s failed and the database is unreachable to say so", run_id)
        return "failed"

    shutting_down = result.cancelled and not recorder.cancel_requested and result.epochs_completed < spec.epochs
    if shutting_down:
        # Queued again in the database; its id is sent once this worker no longer consumes
        # (worker/shutdown.py), or by the reconcile step.
        with sessions() as session:
            released = service.release_run(session, run_id, worker)
        if released:
            log.info("run %s stopped after epoch %s for a shutdown and is queued again (checkpoint kept)",
                     run_id, result.epochs_completed)
        return "queued again"

    def finish():
        with sessions() as session:
            service.finish_run(
                session, run_id, cancelled=result.cancelled and recorder.cancel_requested,
                test_accuracy=result.test_accuracy, val_accuracy=result.val_accuracy, best_epoch=result.best_epoch,
                classes=result.classes, confusion=result.confusion_matrix, info=result.info, worker=worker,
            )

    try:
        retry_while_database_down(finish, settings.heartbeat_timeout)
    except service.LeaseLost:
        log.warning("run %s finished here but was given to another worker meanwhile; its result is theirs", run_id)
        return "lease lost"
    except DATABASE_ERRORS as error:
        log.error("run %s finished but the database stayed unreachable (%s); it will be resumed from its last "
                  "checkpoint and finish again", run_id, error)
        return "database unreachable"
    save_confusion(settings, run_id, result.best_epoch, result.classes, result.confusion_matrix)
    state = "cancelled" if result.cancelled and recorder.cancel_requested else "succeeded"
    log.info("run %s %s: test accuracy %s at epoch %s", run_id, state, result.test_accuracy, result.best_epoch)
    return state
