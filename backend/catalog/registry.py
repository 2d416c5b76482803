"""The catalogue every host shares: datasets made by a job (extracted features) are uploaded to
the artifact store and registered in the database with their catalogue entry. The API lists and
validates against the entry (it never downloads the file); a worker about to train on one fetches
it into its own DATA_DIR/features/ once (checked by SHA-256), where the training library finds
it like any features file."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from training.datasets import DatasetInfo
from training.datasets.features import NAME_PATTERN, read_features

from ..db import utcnow
from ..storage import ArtifactStore
from .models import RegisteredDataset

log = logging.getLogger("missmod.datasets")

FEATURES_PREFIX = "datasets/features"


class DatasetConflict(RuntimeError):
    """This host has a different file under a registered dataset's name."""


def features_key(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"not a dataset name: {name!r}")
    return f"{FEATURES_PREFIX}/{name}.npz"


def info_to_json(info: DatasetInfo) -> dict[str, Any]:
    data = dataclasses.asdict(info)
    data["shapes"] = {k: list(v) for k, v in info.shapes.items()}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def info_from_json(data: dict[str, Any]) -> DatasetInfo:
    fields = {f.name for f in dataclasses.fields(DatasetInfo)}
    values = {k: v for k, v in data.items() if k in fields}
    for name in ("modalities", "classes", "class_counts"):
        values[name] = tuple(values.get(name) or ())
    values["shapes"] = {k: tuple(v) for k, v in (values.get("shapes") or {}).items()}
    return DatasetInfo(**values)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def register_features(session: Session, store: ArtifactStore, path: Path, *, job_id: int | None = None,
                      name: str | None = None) -> RegisteredDataset:
    """Upload a features file the worker just wrote and register it (replacing an earlier one of
    the same name: re-extracting with other settings makes a new version of the dataset)."""
    name = name or path.stem
    info = read_features(path, name).info()  # the format is checked before anything is shared
    key = features_key(name)
    store.put_file(path, key)
    values = {"source": "features", "key": key, "size": path.stat().st_size, "sha256": sha256_of(path),
              "info": info_to_json(info), "job_id": job_id, "created_at": utcnow()}
    row = session.scalar(select(RegisteredDataset).where(RegisteredDataset.name == name))
    if row is None:
        row = RegisteredDataset(name=name, **values)
        session.add(row)
    else:
        for field, value in values.items():
            setattr(row, field, value)
    try:
        session.commit()
    except IntegrityError:  # registered by another host at the same moment: theirs stands, ours updates it
        session.rollback()
        row = session.scalar(select(RegisteredDataset).where(RegisteredDataset.name == name))
        for field, value in values.items():
            setattr(row, field, value)
        session.commit()
    log.info("registered dataset %s (%d bytes) at %s", name, values["size"], key)
    return row


def registered_infos(session: Session) -> dict[str, DatasetInfo]:
    rows = session.execute(select(RegisteredDataset.name, RegisteredDataset.info)).all()
    return {name: info_from_json(info) for name, info in rows}


def registered(session: Session, name: str) -> RegisteredDataset | None:
    return session.scalar(select(RegisteredDataset).where(RegisteredDataset.name == name))


class NotRegistered(LookupError):
    """args: the name of a dataset the shared catalogue does not hold."""


def delete_registered(session: Session, store: ArtifactStore, name: str, data_dir: Path | None = None) -> None:
    """Remove a registered dataset: its row, its file from the artifact store, and this host's
    copy in DATA_DIR/features/ when it is the registered file (same checksum; a different file of
    that name is the host's own and stays). NotRegistered when there is none. Runs trained on it
    keep their results; other hosts' fetched copies are no longer offered by the API."""
    row = registered(session, name) if NAME_PATTERN.match(name) else None
    if row is None:
        raise NotRegistered(name)
    key, sha256 = row.key, row.sha256
    session.delete(row)
    session.commit()
    store.delete(key)
    if data_dir is not None:
        local = Path(data_dir) / "features" / f"{name}.npz"
        with _fetch_lock:
            if local.is_file() and sha256_of(local) == sha256:
                local.unlink()
    log.info("deleted registered dataset %s (%s)", name, key)


# A worker checks a local copy against the registry once per (file, size, mtime, sha).
_verified: dict[tuple, bool] = {}
_fetch_lock = threading.Lock()


def ensure_local_features(session: Session, store: ArtifactStore, name: str, data_dir: Path) -> Path | None:
    """Make a registered dataset trainable on this host: its file in DATA_DIR/features/<name>.npz,
    fetched from the store when absent (atomically: a temporary file, then a rename). None when
    `name` is not registered (a built-in, a raw video dataset or a local file: nothing to fetch).
    DatasetConflict when this host has a different file under that name (it is never overwritten)."""
    row = registered(session, name)
    if row is None:
        return None
    target = Path(data_dir) / "features" / f"{name}.npz"
    with _fetch_lock:
        if target.exists():
            stat = target.stat()
            cache_key = (str(target), stat.st_size, stat.st_mtime_ns, row.sha256)
            if cache_key not in _verified:
                _verified[cache_key] = stat.st_size == row.size and sha256_of(target) == row.sha256
            if not _verified[cache_key]:
                raise DatasetConflict(
                    f"{target} differs from dataset {name!r} registered in the artifact store (made by job "
                    f"{row.job_id}); rename or remove this host's file to train on the registered one")
            return target
        log.info("fetching dataset %s from the artifact store (%d bytes)", name, row.size)
        store.get_file(row.key, target)
        if sha256_of(target) != row.sha256:
            target.unlink(missing_ok=True)
            raise DatasetConflict(f"dataset {name!r} fetched from the artifact store does not match its checksum")
        return target


def lookup(session: Session):
    """name → the registered dataset's catalogue entry (None: not registered), for DatasetCatalog."""

    def find(name: str) -> DatasetInfo | None:
        if not NAME_PATTERN.match(name):  # never registered; and PostgreSQL refuses a NUL in a query
            return None
        info = session.scalar(select(RegisteredDataset.info).where(RegisteredDataset.name == name))
        return None if info is None else info_from_json(info)

    return find
