"""A run's files in the artifact store (backend/storage.py), under `runs/<id>/`: its checkpoints,
its confusion matrix, whatever else a worker writes for it. The API lists, serves and deletes
them from the store, whichever host trained the run. The requested path comes from the URL, so
it is refused unless it is a plain relative path inside the run's folder (storage.clean_key).

Checkpoints are keyed by run id *and attempt* (`runs/<id>/checkpoints/attempt-<n>.pt`): a worker
writes only under its own attempt, so a worker taken for dead that is still finishing an epoch
can never overwrite the checkpoint of the attempt that replaced it, and a retried run (which
starts over) ignores every attempt before the retry even if deleting their files failed.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from training.paths import PathOutsideRoot, inside

from ..settings import Settings
from ..storage import ArtifactStore, InvalidKey, StoredFile, clean_key, store_for

__all__ = ["Artifact", "ArtifactNotFound", "FoundArtifact", "PathOutsideRoot", "RunCheckpoints", "StoreLocation", "artifact_store", "list_artifacts",
           "find_artifact", "remove_run_files", "run_artifact_dir", "run_prefix", "write_run_file"]

log = logging.getLogger("missmod.artifacts")

CHECKPOINTS = "checkpoints"
# The validation-selected model with what it needs to predict (training/bundle.py), one per run.
MODEL_BUNDLE = "model.zip"
_ATTEMPT_FILE = re.compile(r"^attempt-(\d+)\.pt$")


@dataclass
class Artifact:
    path: str  # relative to the run's folder, with '/'
    size: int


# Where the runs' files are: the settings (ARTIFACT_URL), a store, or a local folder.
StoreLocation = Settings | ArtifactStore | str | Path


def artifact_store(where: StoreLocation) -> ArtifactStore:
    """The store from Settings, a store, or a folder (the local default, as older callers pass it)."""
    if isinstance(where, ArtifactStore):
        return where
    if isinstance(where, (str, Path)):
        return ArtifactStore(str(where))
    return store_for(where)


def run_prefix(run_id: int) -> str:
    return f"runs/{int(run_id)}"


def run_artifact_dir(artifact_dir: Path, run_id: int) -> Path:
    """ARTIFACT_DIR/runs/<id>: the run's folder when the store is the local default."""
    return inside(artifact_dir, run_prefix(run_id))


def list_artifacts(where, run_id: int) -> list[Artifact]:
    return [Artifact(f.key, f.size) for f in artifact_store(where).list(run_prefix(run_id))]


def artifact_key(run_id: int, relative: str) -> str:
    """The store key of a run's file named in a URL; InvalidKey (a PathOutsideRoot) when it is not
    a plain relative path."""
    return f"{run_prefix(run_id)}/{clean_key(relative)}"


class ArtifactNotFound(LookupError):
    """args: the run id and the path asked for."""


@dataclass
class FoundArtifact:
    store: ArtifactStore
    key: str
    local: Path | None  # the file itself when the store is a local folder
    size: int | None  # when it is not (an object store)


def find_artifact(where: StoreLocation, run_id: int, path: str) -> FoundArtifact:
    """A run's file named in a URL: PathOutsideRoot unless the path is a plain relative one inside
    the run's folder, ArtifactNotFound when there is no such file."""
    store = artifact_store(where)
    key = artifact_key(run_id, path)
    local = store.local_path(key)
    try:
        size = store.size(key) if local is None else None
    except FileNotFoundError:
        raise ArtifactNotFound(run_id, path) from None
    if local is not None and (not local.is_file() or local.is_symlink()):
        raise ArtifactNotFound(run_id, path)
    return FoundArtifact(store, key, local, size)


def write_run_file(where, run_id: int, name: str, data: bytes) -> None:
    artifact_store(where).write_bytes(artifact_key(run_id, name), data)


def write_confusion(where, run_id: int, epoch: int, classes: list[str], counts: list[list[int]]) -> None:
    """The final confusion matrix as a file beside the checkpoints, for scripts that sync a run's
    folder (the API serves the same numbers from the database)."""
    body = json.dumps({"epoch": epoch, "classes": classes, "counts": counts}).encode()
    write_run_file(where, run_id, "confusion.json", body)


def remove_run_files(where: StoreLocation | None, run_ids: Iterable[int]) -> None:
    """Delete the runs' folders from the store. A store that cannot be reached is logged, not raised:
    the rows are already gone, and a retried run ignores older attempts' checkpoints anyway."""
    if where is None:
        return
    store = artifact_store(where)
    for run_id in run_ids:
        try:
            store.delete_prefix(run_prefix(run_id))
        except Exception as error:  # the object store is down: the files stay, orphaned but harmless
            log.error("could not delete the files of run %s from %s: %s", run_id, store, error)


class RunCheckpoints:
    """The checkpoint target the training library writes to and resumes from (training/checkpoint.py
    takes any object with `read_bytes()` and `write_bytes(data)`): writes go to this attempt's key;
    reads take the newest earlier attempt's checkpoint, among those after `resume_after_attempt`
    (a retry sets it, so a retried run starts over)."""

    def __init__(self, where, run_id: int, attempt: int, resume_after_attempt: int = 0):
        self.store = artifact_store(where)
        self.run_id, self.attempt, self.resume_after_attempt = int(run_id), int(attempt), int(resume_after_attempt)
        self.prefix = f"{run_prefix(run_id)}/{CHECKPOINTS}"
        self._pruned = False

    def key(self, attempt: int) -> str:
        return f"{self.prefix}/attempt-{int(attempt)}.pt"

    def attempts_stored(self) -> list[int]:
        found = (_ATTEMPT_FILE.match(f.key) for f in self.store.list(self.prefix))
        return sorted(int(m.group(1)) for m in found if m)

    def read_bytes(self) -> bytes | None:
        """This attempt's checkpoint if it wrote one, else the newest usable earlier one; None: start over."""
        usable = [a for a in self.attempts_stored() if self.resume_after_attempt < a <= self.attempt]
        for attempt in reversed(usable):
            try:
                return self.store.read_bytes(self.key(attempt))
            except FileNotFoundError:  # deleted meanwhile (the run was retried or deleted)
                continue
        return None

    def write_bytes(self, data: bytes) -> None:
        self.store.write_bytes(self.key(self.attempt), data)
        if not self._pruned:
            # Once this attempt has a checkpoint, the earlier ones are history (one listing per attempt).
            for attempt in self.attempts_stored():
                if attempt < self.attempt:
                    self.store.delete(self.key(attempt))
            self._pruned = True

    def __repr__(self) -> str:
        return f"RunCheckpoints({self.store.url!r}, run {self.run_id}, attempt {self.attempt})"


def bundle_key(run_id: int) -> str:
    return f"{run_prefix(run_id)}/{MODEL_BUNDLE}"


class RunBundle:
    """Where the training library writes the run's model bundle (an object with `write_bytes`,
    as for checkpoints): one key per run, replaced atomically with the first checkpoint after a
    newly selected epoch, and when the run ends. A retried run starts over and replaces it; the
    bundle names its epoch, which the API checks against the run's selected epoch before
    serving it."""

    def __init__(self, where, run_id: int):
        self.store = artifact_store(where)
        self.key = bundle_key(run_id)

    def read_bytes(self) -> bytes | None:
        try:
            return self.store.read_bytes(self.key)
        except FileNotFoundError:
            return None

    def write_bytes(self, data: bytes) -> None:
        self.store.write_bytes(self.key, data)

    def __repr__(self) -> str:
        return f"RunBundle({self.store.url!r}, {self.key!r})"


__all__ += ["MODEL_BUNDLE", "RunBundle", "bundle_key", "InvalidKey", "StoredFile", "artifact_key", "write_confusion"]
