"""Runs one queued run: load its spec from the database, train, and write back every epoch's
points, a heartbeat, and the final result. Plain code, callable without Celery."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from sqlalchemy.orm import sessionmaker

from backend.db import session_factory
from backend.runs import service
from backend.settings import Settings

from .training.spec import TrainSpec
from .training.train import TrainingCallback, train

log = logging.getLogger("missmod.worker")


class DatabaseRecorder(TrainingCallback):
    """Commits each epoch's metrics as soon as it ends, so the dashboard can show them, and
    picks up a cancel request in the same transaction."""

    # A stage's progress (clips preprocessed) is written at most this often, and at its end.
    STAGE_PROGRESS_INTERVAL = 0.5

    def __init__(self, sessions: sessionmaker, run_id: int):
        self.sessions = sessions
        self.run_id = run_id
        self.cancel_requested = False
        self._stage_written_at = 0.0

    def on_start(self, info: dict[str, Any]) -> None:
        with self.sessions() as session:
            service.record_info(session, self.run_id, info)

    def on_stage_epoch(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        # Recorded like epochs, under their own metric names (e.g. imputer_y_mse), so they show
        # on the curves without touching the classifier's epoch count.
        with self.sessions() as session:
            self.cancel_requested = service.record_points(session, self.run_id, epoch, metrics)

    def on_stage_progress(self, stage: str, done: int, total: int, details: dict[str, Any]) -> None:
        # Shown on the run page while the stage lasts (run.info.stage); on_start then replaces it.
        now = time.monotonic()
        if done < total and now - self._stage_written_at < self.STAGE_PROGRESS_INTERVAL:
            return
        self._stage_written_at = now
        with self.sessions() as session:
            self.cancel_requested = service.record_stage(
                session, self.run_id, {"stage": stage, "stage_done": done, "stage_total": total, **details})

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        with self.sessions() as session:
            self.cancel_requested = service.record_epoch(session, self.run_id, epoch, metrics)

    def should_stop(self) -> bool:
        return self.cancel_requested


class Heartbeat:
    """Marks the run alive every `interval` seconds from a thread, so a long epoch still
    shows a live worker, and a dead one shows a stale heartbeat."""

    def __init__(self, sessions: sessionmaker, run_id: int, interval: float):
        self.sessions, self.run_id, self.interval = sessions, run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run_id}", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.sessions() as session:
                    service.beat(session, self.run_id)
            except Exception as error:  # a missed beat is not fatal; the next one may land
                log.warning("heartbeat of run %s failed: %s", self.run_id, error)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def checkpoint_path(settings: Settings, run_id: int) -> Path:
    """Where a run's checkpoint lives; a redelivered run continues from it."""
    return service.run_artifact_dir(settings.artifact_dir, run_id) / "checkpoint.pt"


def execute_run(run_id: int, settings: Settings, worker: str | None = None) -> None:
    """`worker` names who runs it (Celery node name and pid); the host and pid by default."""
    sessions = session_factory(settings.database_url)
    with sessions() as session:
        run = service.start_run(session, run_id, worker or f"{socket.gethostname()}/{os.getpid()}")
        if run is None:
            log.info("run %s is not runnable (missing, finished or cancelled); skipped", run_id)
            return
        spec_data = dict(run.spec)

    log.info("run %s started: %s", run_id, spec_data)
    try:
        spec = TrainSpec.model_validate(spec_data)
        with Heartbeat(sessions, run_id, settings.heartbeat_interval):
            result = train(spec, DatabaseRecorder(sessions, run_id), data_dir=settings.data_dir,
                           checkpoint_path=checkpoint_path(settings, run_id), video=settings.video_options())
    except Exception as error:
        log.exception("run %s failed", run_id)
        with sessions() as session:
            service.fail_run(session, run_id, f"{type(error).__name__}: {error}", traceback.format_exc())
        return

    with sessions() as session:
        service.finish_run(
            session, run_id, cancelled=result.cancelled, test_accuracy=result.test_accuracy,
            val_accuracy=result.val_accuracy, best_epoch=result.best_epoch, classes=result.classes,
            confusion=result.confusion_matrix, info=result.info,
        )
    log.info("run %s %s: test accuracy %s at epoch %s", run_id, "cancelled" if result.cancelled else "succeeded",
             result.test_accuracy, result.best_epoch)
