"""What a worker keeps in the shared artifact store (backend/storage.py), so that any host can
carry on or serve it: a run's checkpoints (by run id and attempt), its confusion matrix, and the
features datasets its jobs extract (registered in the database). And the reverse: a registered
dataset made on another host is fetched into this host's DATA_DIR before a run trains on it."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from backend.catalog import registry
from backend.runs.artifacts import RunCheckpoints, write_confusion
from backend.settings import Settings
from backend.storage import store_for

log = logging.getLogger("missmod.worker")


def run_checkpoints(settings: Settings, run_id: int, attempt: int, resume_after_attempt: int = 0) -> RunCheckpoints:
    """Where this attempt of the run writes its checkpoints and resumes from (training/checkpoint.py)."""
    return RunCheckpoints(store_for(settings), run_id, attempt, resume_after_attempt)


def fetch_dataset(settings: Settings, sessions: sessionmaker, name: str) -> Path | None:
    """A dataset registered by a job on any host, made local here (None: not a registered one)."""
    with sessions() as session:
        return registry.ensure_local_features(session, store_for(settings), name, settings.data_dir)


def save_confusion(settings: Settings, run_id: int, epoch: int | None, classes, counts) -> None:
    if counts is None or epoch is None:
        return
    try:
        write_confusion(store_for(settings), run_id, epoch, list(classes), counts)
    except Exception as error:  # the database has it too: a store outage must not fail a finished run
        log.error("run %s: could not write confusion.json to the artifact store: %s", run_id, error)


def register_features(settings: Settings, sessions: sessionmaker, path: Path, job_id: int) -> dict:
    """Upload an extracted features file and register it for every host; what the job reports."""
    with sessions() as session:
        row = registry.register_features(session, store_for(settings), path, job_id=job_id)
        return {"features_dataset": row.name, "path": str(path), "key": row.key, "size": row.size,
                "sha256": row.sha256}
