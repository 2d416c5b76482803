"""The artifact store: one place, for every host, for what runs and jobs leave behind —
checkpoints, run files, extracted-feature datasets. `ARTIFACT_URL` says where: a local folder
(the default, `ARTIFACT_DIR`), a shared mount (any path), or an S3-compatible object store
(`s3://bucket/prefix`, e.g. MinIO; `S3_ENDPOINT_URL` and the `AWS_*` keys).

Through fsspec (with s3fs for `s3://`), not obstore or boto3: fsspec is already installed with
torch, gives one API over a folder, a mount and S3 (and GCS, Azure with their plug-ins), is
what PyTorch Lightning, pandas and Hugging Face use for the same job, and its S3 side is the
maintained s3fs; obstore is faster on big transfers but would be a second abstraction beside
the local one, and boto3 would mean writing the local-folder side ourselves.

Keys are '/'-separated paths relative to the store's root. Writes are atomic for a reader on
any host: in a folder a temporary file (name starting with '.') then a rename; on S3 one object
put (a multipart upload too only becomes visible when it completes). Names starting with '.'
are never listed or served.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import fsspec

from training.atomic import atomic_write
from training.paths import PathOutsideRoot, inside

__all__ = ["ArtifactStore", "InvalidKey", "StoredFile", "clean_key", "store_for"]


class InvalidKey(PathOutsideRoot):
    """A key (usually from a URL) that is not a plain relative path inside the store."""


def clean_key(key: str) -> str:
    """The key, refused when it is empty, absolute, climbs with `..`, holds a backslash, a NUL, or
    a hidden part (temporary files of atomic writes)."""
    if not key or "\x00" in key or "\\" in key:
        raise InvalidKey(f"not a relative path: {key!r}")
    parts = PurePosixPath(key)
    if parts.is_absolute() or ".." in parts.parts or any(part.startswith(".") for part in parts.parts):
        raise InvalidKey(f"not a relative path inside the store: {key!r}")
    return parts.as_posix()


@dataclass(frozen=True)
class StoredFile:
    key: str  # relative to the listed prefix
    size: int


class ArtifactStore:
    """A folder or a bucket behind one small interface. Thread-safe; one per process (store_for)."""

    def __init__(self, url: str, *, endpoint_url: str | None = None, key: str | None = None,
                 secret: str | None = None):
        self.url = url
        protocol = fsspec.utils.get_protocol(url)
        self.is_local = protocol in ("file", "local")
        if self.is_local:
            self.root = Path(fsspec.utils.stringify_path(url).removeprefix("file://")).expanduser().absolute()
            self.fs = fsspec.filesystem("file")
        else:
            options: dict = {}
            if protocol in ("s3", "s3a"):
                # Another host's writes must show at once: no cached listings.
                options = {"use_listings_cache": False, "skip_instance_cache": True}
                if endpoint_url:
                    options["client_kwargs"] = {"endpoint_url": endpoint_url}
                if key and secret:
                    options.update(key=key, secret=secret)
            self.fs, root = fsspec.core.url_to_fs(url, **options)
            self.root = PurePosixPath(root.rstrip("/"))

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    # --- paths ----------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        key = clean_key(key)
        if self.is_local:
            return str(inside(self.root, key))  # no symbolic link out of the folder either
        return f"{self.root}/{key}"

    def local_path(self, key: str) -> Path | None:
        """The file itself when the store is a folder (served with sendfile); None on S3."""
        return Path(self._path(key)) if self.is_local else None

    # --- writing --------------------------------------------------------------------------

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if not self.is_local:
            self.fs.pipe_file(path, data)
            return
        self._replace_locally(Path(path), lambda file: file.write(data))

    def put_file(self, source: Path, key: str) -> None:
        """Upload a local file (a features dataset: possibly large) under `key`."""
        path = self._path(key)
        if not self.is_local:
            self.fs.put_file(str(source), path)
            return
        with open(source, "rb") as reader:
            self._replace_locally(Path(path), lambda file: shutil.copyfileobj(reader, file, 1 << 20))

    @staticmethod
    def _replace_locally(path: Path, write) -> None:
        with atomic_write(path) as file:
            write(file)

    # --- reading --------------------------------------------------------------------------

    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""
        path = self._path(key)
        if self.is_local and not self._visible_local(Path(path)):
            raise FileNotFoundError(key)
        return self.fs.cat_file(path)

    def open(self, key: str) -> IO[bytes]:
        path = self._path(key)
        if self.is_local and not self._visible_local(Path(path)):
            raise FileNotFoundError(key)
        return self.fs.open(path, "rb")

    def get_file(self, key: str, target: Path) -> None:
        """Download to `target` atomically (a temporary file beside it, then a rename)."""
        with self.open(key) as reader:
            self._replace_locally(target, lambda file: shutil.copyfileobj(reader, file, 1 << 20))

    def size(self, key: str) -> int:
        path = self._path(key)
        if self.is_local and not self._visible_local(Path(path)):
            raise FileNotFoundError(key)
        return int(self.fs.size(path))

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def _visible_local(self, path: Path) -> bool:
        return path.is_file() and not path.is_symlink()

    def list(self, prefix: str) -> list[StoredFile]:
        """Every visible file under `prefix` (a folder-like key), keys relative to it, sorted."""
        base = self._path(prefix)
        if self.is_local:
            root = Path(base)
            if not root.is_dir():
                return []
            return [StoredFile(path.relative_to(root).as_posix(), path.stat().st_size)
                    for path in sorted(root.rglob("*"))
                    if self._visible_local(path)
                    and not any(part.startswith(".") for part in path.relative_to(root).parts)]
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        files = []
        for path, info in found.items():
            relative = PurePosixPath(path).relative_to(base)
            if info.get("type") == "file" and not any(part.startswith(".") for part in relative.parts):
                files.append(StoredFile(relative.as_posix(), int(info.get("size") or 0)))
        return sorted(files, key=lambda f: f.key)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self.open(key) as file:
            while chunk := file.read(chunk_size):
                yield chunk

    # --- deleting -------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> None:
        """Everything under `prefix` (a folder-like key); nothing there is fine."""
        path = self._path(prefix)
        if self.is_local:
            shutil.rmtree(path, ignore_errors=True)
            return
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass


_stores: dict[tuple, ArtifactStore] = {}
_stores_lock = threading.Lock()


def store_for(settings) -> ArtifactStore:
    """The store of these settings, one per process: an S3 client is not shared across a fork
    (a Celery pool process makes its own)."""
    key_id = settings.aws_access_key_id.get_secret_value() if settings.aws_access_key_id else None
    secret = settings.aws_secret_access_key.get_secret_value() if settings.aws_secret_access_key else None
    cache_key = (settings.artifact_url, settings.s3_endpoint_url, key_id, secret, os.getpid())
    with _stores_lock:
        store = _stores.get(cache_key)
        if store is None:
            store = _stores[cache_key] = ArtifactStore(settings.artifact_url, endpoint_url=settings.s3_endpoint_url,
                                                       key=key_id, secret=secret)
        return store
