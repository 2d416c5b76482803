"""Runs one dataset job (preprocessing a raw video dataset, or extracting its features with
a frozen backbone): load it from the database, do it with the training library, and write
back progress, a heartbeat and the result. Plain code, callable without Celery."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback

from backend.db import session_factory
from backend.jobs import service
from backend.jobs.models import JobKind
from backend.settings import Settings

from .artifacts import register_features

log = logging.getLogger("missmod.worker")

PROGRESS_INTERVAL = 0.5  # seconds between progress writes


class JobProgress:
    """Progress callback for the library: writes (throttled) and answers whether to go on."""

    def __init__(self, sessions, job_id: int):
        self.sessions, self.job_id = sessions, job_id
        self.written_at = 0.0
        self.cancel_requested = False

    def __call__(self, done: int, total: int, *_) -> bool:
        now = time.monotonic()
        if done >= total or now - self.written_at >= PROGRESS_INTERVAL:
            self.written_at = now
            with self.sessions() as session:
                self.cancel_requested = service.record_progress(session, self.job_id, done, total)
        return not self.cancel_requested


def _heartbeat(sessions, job_id: int, interval: float, stop: threading.Event) -> None:
    while not stop.wait(interval):
        try:
            with sessions() as session:
                service.beat(session, job_id)
        except Exception as error:  # a missed beat is not fatal
            log.warning("heartbeat of job %s failed: %s", job_id, error)


def execute_job(job_id: int, settings: Settings, worker: str | None = None) -> None:
    from training.audiovisual.extract import ExtractionStopped, extract_features
    from training.audiovisual.preprocess import PreprocessingStopped
    from training.datasets import prepare_raw_dataset

    sessions = session_factory(settings.database_url)
    with sessions() as session:
        job = service.start_job(session, job_id, worker or f"{socket.gethostname()}/{os.getpid()}")
        if job is None:
            log.info("job %s is not runnable (missing, finished or cancelled); skipped", job_id)
            return
        kind, dataset, params = job.kind, job.dataset, dict(job.params)

    log.info("job %s started: %s %s %s", job_id, kind, dataset, params)
    progress = JobProgress(sessions, job_id)
    stop = threading.Event()
    beating = threading.Thread(target=_heartbeat, args=(sessions, job_id, settings.heartbeat_interval, stop),
                               daemon=True)
    beating.start()
    cancelled, result = False, None
    try:
        if kind == JobKind.preprocess:
            report = prepare_raw_dataset(dataset, settings.data_dir, settings.video_options(), progress)
            result = None if report is None else {**report.summary(), "failed_clips": report.failed}
        elif kind == JobKind.extract_features:
            path = extract_features(dataset, settings.data_dir, params["backbone"], params["pretrained"],
                                    settings.video_options(), params.get("name"), params["batch_size"],
                                    params["device"], progress_bar=False, progress=progress)
            # Uploaded to the artifact store and registered: trainable through every host's API.
            result = register_features(settings, sessions, path, job_id)
        else:
            raise ValueError(f"unknown job kind {kind!r}")
    except (PreprocessingStopped, ExtractionStopped):
        cancelled = True
    except Exception as error:
        log.exception("job %s failed", job_id)
        with sessions() as session:
            service.fail_job(session, job_id, f"{type(error).__name__}: {error}", traceback.format_exc())
        return
    finally:
        stop.set()
        beating.join(timeout=5)
    with sessions() as session:
        service.finish_job(session, job_id, cancelled=cancelled, result=result)
    log.info("job %s %s", job_id, "cancelled" if cancelled else "succeeded")
