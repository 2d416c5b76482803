"""Runs one dataset job (preprocessing a raw video dataset, or extracting its features with
a frozen backbone): claim it, do it with the training library, and write back progress, a
heartbeat and the result. The lease — claim, heartbeat, cancel, retries while the database is
down, giving the job back on shutdown — is worker/lease_holder.py's, shared with runs. Plain
code, callable without Celery."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from backend.jobs.models import DatasetJob, JobKind
from backend.lifecycle import lease
from backend.settings import Settings

from training.train import StopReason

from .artifacts import register_features
from .lease_holder import Done, Executed, LeaseHolder, execute_leased

log = logging.getLogger("missmod.worker")


def execute_job(job_id: int, settings: Settings, worker: str | None = None,
                stop_requested: Callable[[], bool] = lambda: False) -> Executed:
    """`worker` names who runs it (Celery node name and pid). Returns what happened."""

    def work(job: DatasetJob, holder: LeaseHolder) -> Done:
        from training.audiovisual.extract import ExtractionStopped, extract_features
        from training.audiovisual.preprocess import PreprocessingStopped
        from training.datasets import prepare_raw_dataset

        log.info("job %s: %s %s %s", job_id, job.kind, job.dataset, job.params)
        reached = {"done": 0, "total": 0}

        def progress(done: int, total: int, *_) -> bool:
            """The library's progress callback: writes (throttled) and answers whether to go on."""
            reached.update(done=done, total=total)
            if holder.progress_due(done, total):
                holder.record(done=done, total=total)
            return not holder.should_stop()

        result: dict[str, Any] | None = None
        try:
            if job.kind == JobKind.preprocess:
                report = prepare_raw_dataset(job.dataset, settings.data_dir, settings.video_options(), progress)
                result = None if report is None else {**report.summary(), "failed_clips": report.failed}
            elif job.kind == JobKind.extract_features:
                params = job.params
                path = extract_features(job.dataset, settings.data_dir, params["backbone"], params["pretrained"],
                                        settings.video_options(), params.get("name"), params["batch_size"],
                                        params["device"], progress_bar=False, progress=progress)
                # Uploaded to the artifact store and registered: trainable through every host's API.
                result = register_features(settings, holder.sessions, path, job_id)
            else:
                raise ValueError(f"unknown job kind {job.kind!r}")
            stopped = StopReason.finished
        except (PreprocessingStopped, ExtractionStopped):
            stopped = holder.stop_reason()

        def store(session, cancelled: bool) -> None:
            lease.finish(session, DatasetJob, job_id, holder.worker, cancelled=cancelled, result=result)

        return Done(stopped, store, reached=f"after {reached['done']} of {reached['total']} (finished ones kept)")

    return execute_leased(DatasetJob, job_id, settings, work, worker, stop_requested)
