"""Bring-your-own two-view data: every `<name>.npz` in `DATA_DIR/features/` is dataset `<name>`.

Format (arrays in one .npz, e.g. written with `numpy.savez`):

- `label`   (n,) integers ≥ 0, the class of each sample;
- exactly two numeric arrays of shape (n, …) whose keys are the modality names
  (e.g. `audio` (n, 512) and `visual` (n, 2048));
- optional `group`   (n,) — samples sharing a group (the segments of one video) are split
  together, lose a modality together, and are scored by their averaged probabilities;
- optional `subject` (n,) — for subject-independent splits (`split_by: subject`);
- optional `classes` (K,) — class names, label k is `classes[k]`.

A file that breaks the format is listed with the reason and cannot be trained on; it never
breaks the other datasets. Files are read without pickle, and defensively (FeatureLimits): the
arrays' declared shapes are read from their headers and their total size checked before
anything is allocated, the number of classes is capped, and the values must be finite once
cast to float32 (the training dtype). Parsed files are cached by size in bytes, least recently
used first out, and read again when a file changes or is gone.
"""

from __future__ import annotations

import math
import os
import re
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from ..two_view import DatasetError, DatasetInfo, TwoViewData

RESERVED_KEYS = ("label", "group", "subject", "classes")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class FeatureLimits:
    """What one features file may hold. The API and the worker pass their settings'
    (MAX_CLASSES, FEATURES_MAX_BYTES, FEATURES_CACHE_BYTES) through `configure_features`; on
    its own the library reads the same environment variables."""

    max_bytes: int = 4 * 2**30  # the decoded arrays, plus their float32 copies
    max_classes: int = 1000
    cache_bytes: int = 2**30

    @classmethod
    def from_env(cls) -> "FeatureLimits":
        defaults = cls()
        return cls(max_bytes=int(os.environ.get("FEATURES_MAX_BYTES", defaults.max_bytes)),
                   max_classes=int(os.environ.get("MAX_CLASSES", defaults.max_classes)),
                   cache_bytes=int(os.environ.get("FEATURES_CACHE_BYTES", defaults.cache_bytes)))


def _npy_header(member) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of an .npy stream, reading its header only."""
    version = npy_format.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = npy_format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, _, dtype = npy_format.read_array_header_2_0(member)
    else:
        raise DatasetError(f"unsupported .npy format version {version}")
    return shape, dtype, member.tell()


def check_declared_sizes(path: Path, limits: FeatureLimits) -> None:
    """Refuse a file whose arrays, as their headers declare them, hold objects (pickle), more
    bytes than the file says it holds, too many classes, or more bytes in all than the limit:
    before numpy allocates anything for them."""
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist():
                if not entry.filename.endswith(".npy"):
                    continue
                key = entry.filename[:-4]
                with archive.open(entry) as member:
                    shape, dtype, header_length = _npy_header(member)
                if dtype.hasobject:
                    raise DatasetError(f"array '{key}' holds Python objects, which are read only with pickle; "
                                       "store numbers and strings")
                if any(side < 0 for side in shape):
                    raise DatasetError(f"array '{key}' declares a negative shape {shape}")
                count = math.prod(shape)
                size = count * dtype.itemsize
                if entry.file_size - header_length != size:
                    raise DatasetError(f"array '{key}' declares shape {shape} ({size:,} bytes) but holds "
                                       f"{entry.file_size - header_length:,} bytes")
                if key == "classes" and count > limits.max_classes:
                    raise DatasetError(f"'classes' names {count:,} classes; at most {limits.max_classes:,} "
                                       "(setting MAX_CLASSES)")
                total += size
                if key not in RESERVED_KEYS and dtype != np.float32:
                    total += count * 4  # the float32 copy training uses
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DatasetError(f"not a readable .npz file: {error}") from None
    if total > limits.max_bytes:
        raise DatasetError(f"its arrays take {total:,} bytes once read; at most {limits.max_bytes:,} "
                           "(setting FEATURES_MAX_BYTES)")


def feature_files(features_dir: Path) -> dict[str, Path]:
    """Dataset name → file, for the .npz files directly in `features_dir` (no links out of it)."""
    if not features_dir.is_dir():
        return {}
    files = {}
    for path in sorted(features_dir.glob("*.npz")):
        if path.is_file() and not path.is_symlink():
            files[path.stem] = path
    return files


def _factorise(values: np.ndarray, what: str, n: int) -> np.ndarray:
    if values.ndim != 1 or len(values) != n:
        raise DatasetError(f"'{what}' must have shape ({n},), got {values.shape}")
    return np.unique(values, return_inverse=True)[1].astype(np.int64)


def _labels(arrays: dict[str, np.ndarray], max_classes: int) -> np.ndarray:
    if "label" not in arrays:
        raise DatasetError(f"missing array 'label' (found: {', '.join(arrays) or 'nothing'})")
    labels = arrays["label"]
    if labels.ndim != 1:
        raise DatasetError(f"'label' must be one-dimensional, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise DatasetError(f"'label' must hold integers, got dtype {labels.dtype}")
    if len(labels) == 0:
        raise DatasetError("'label' is empty")
    if labels.min() < 0:
        raise DatasetError(f"'label' has a negative value ({labels.min()})")
    if labels.max() >= max_classes:
        raise DatasetError(f"'label' goes up to {labels.max()}: at most {max_classes:,} classes "
                           "(setting MAX_CLASSES)")
    if len(np.unique(labels)) < 2:
        raise DatasetError(f"'label' holds only one class ({labels[0]}); classification needs two or more")
    return labels.astype(np.int64)


def _modalities(arrays: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    names = [key for key in arrays if key not in RESERVED_KEYS]
    if len(names) != 2:
        raise DatasetError(f"needs exactly two modality arrays besides {', '.join(RESERVED_KEYS)}; "
                           f"found {len(names)}: {', '.join(names) or 'none'}")
    views = {}
    for name in names:
        values = arrays[name]
        if values.dtype.kind not in "iuf":
            raise DatasetError(f"modality '{name}' must be numeric, got dtype {values.dtype}")
        if values.ndim < 2:
            raise DatasetError(f"modality '{name}' must have shape ({n}, …) with at least one feature, "
                               f"got {values.shape}")
        if values.shape[0] != n:
            raise DatasetError(f"modality '{name}' has {values.shape[0]} rows but 'label' has {n}")
        if math.prod(values.shape[1:]) == 0:
            raise DatasetError(f"modality '{name}' has no features: shape {values.shape}")
        # Checked after the cast: 1e300 is finite in float64 but infinite in float32.
        with np.errstate(over="ignore", invalid="ignore"):
            values = values.astype(np.float32, copy=False)
        if not np.all(np.isfinite(values)):
            row = int(np.argwhere(~np.isfinite(values.reshape(n, -1)))[0][0])
            raise DatasetError(f"modality '{name}' has NaN or infinite values (first in row {row}) as float32, "
                               "the training dtype, where beyond ±3.4e38 is infinite")
        views[name] = values
    return views


def _classes(arrays: dict[str, np.ndarray], labels: np.ndarray) -> tuple[str, ...]:
    if "classes" not in arrays:
        return tuple(str(k) for k in range(int(labels.max()) + 1))
    classes = arrays["classes"]
    if classes.ndim != 1:
        raise DatasetError(f"'classes' must be one-dimensional, got shape {classes.shape}")
    if labels.max() >= len(classes):
        raise DatasetError(f"'label' goes up to {labels.max()} but 'classes' names only {len(classes)} classes")
    return tuple(str(c) for c in classes)


def read_features(path: Path, name: str | None = None, limits: FeatureLimits = FeatureLimits()) -> TwoViewData:
    """Load and check one features file; DatasetError says what is wrong."""
    name = name or path.stem
    if not NAME_PATTERN.match(name):
        raise DatasetError(f"file name {path.name!r}: a dataset name may hold letters, digits, '_', '.', '-'")
    check_declared_sizes(path, limits)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DatasetError(f"not a readable .npz file: {error}") from None
    labels = _labels(arrays, limits.max_classes)
    n = len(labels)
    views = _modalities(arrays, n)
    groups = _factorise(arrays["group"], "group", n) if "group" in arrays else np.arange(n, dtype=np.int64)
    first_label = np.full(groups.max() + 1, -1)
    first_label[groups[::-1]] = labels[::-1]
    mixed = np.flatnonzero(first_label[groups] != labels)
    if len(mixed):
        raise DatasetError(f"group of row {mixed[0]} holds more than one label; a group must have one class")
    subjects = _factorise(arrays["subject"], "subject", n) if "subject" in arrays else None
    return TwoViewData(
        name=name,
        title=name,
        description=f"features from {path.name}: {', '.join(f'{m} {v.shape[1:]}' for m, v in views.items())}",
        views=views,
        labels=labels,
        classes=_classes(arrays, labels),
        groups=groups,
        subjects=subjects,
        source="features",
    )


def _nbytes(data: TwoViewData) -> int:
    arrays = [*data.views.values(), data.labels, data.groups]
    if data.subjects is not None:
        arrays.append(data.subjects)
    return sum(array.nbytes for array in arrays)


class FeatureFileCache:
    """Parsed files by path, each read again when its size or modification time changes. The
    listing (a DatasetInfo, or why the file is unusable) of every file is kept; the arrays only
    within `limits.cache_bytes`, least recently used out first. Thread-safe: the API reads
    from several threads."""

    def __init__(self, limits: FeatureLimits | None = None):
        self.limits = limits or FeatureLimits.from_env()
        self._infos: dict[Path, tuple[tuple[int, int], DatasetInfo]] = {}
        self._data: OrderedDict[Path, tuple[tuple[int, int], TwoViewData, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    @property
    def cached_files(self) -> int:
        return len(self._data)

    def configure(self, limits: FeatureLimits) -> None:
        with self._lock:
            if limits != self.limits:
                self.limits = limits
                self._infos.clear()
                self._data.clear()
                self._bytes = 0

    def _forget(self, path: Path) -> None:
        self._infos.pop(path, None)
        entry = self._data.pop(path, None)
        if entry is not None:
            self._bytes -= entry[2]

    def forget_missing(self, directory: Path, present: set[Path]) -> None:
        """Drop what is cached of the files of `directory` that are gone."""
        with self._lock:
            for path in [p for p in [*self._infos, *self._data] if p.parent == directory and p not in present]:
                self._forget(path)

    def _stat_key(self, path: Path) -> tuple[int, int]:
        try:
            stat = path.stat()
        except OSError as error:
            with self._lock:
                self._forget(path)
            raise DatasetError(f"{path.name} cannot be read: {error.strerror or error}") from None
        return stat.st_size, stat.st_mtime_ns

    def get(self, path: Path) -> TwoViewData:
        key = self._stat_key(path)
        with self._lock:
            entry = self._data.get(path)
            if entry is not None and entry[0] == key:
                self._data.move_to_end(path)
                return entry[1]
            listed = self._infos.get(path)
            if listed is not None and listed[0] == key and listed[1].error:
                raise DatasetError(listed[1].error)
            self._forget(path)
        try:
            data = read_features(path, limits=self.limits)
            info = data.info()
        except Exception as error:  # MemoryError included: this file is unusable, never the others
            reason = str(error) if isinstance(error, DatasetError) else \
                f"could not be read ({type(error).__name__}: {error or 'no detail'})"
            with self._lock:
                self._infos[path] = (key, DatasetInfo.broken(path.stem, "features", reason))
            raise DatasetError(reason) from None
        size = _nbytes(data)
        with self._lock:
            self._forget(path)
            self._infos[path] = (key, info)
            if size <= self.limits.cache_bytes:
                self._data[path] = (key, data, size)
                self._bytes += size
                while self._bytes > self.limits.cache_bytes:
                    _, (_, _, evicted) = self._data.popitem(last=False)
                    self._bytes -= evicted
        return data

    def info(self, path: Path) -> DatasetInfo:
        try:
            key = self._stat_key(path)
        except DatasetError as error:
            return DatasetInfo.broken(path.stem, "features", str(error))
        with self._lock:
            listed = self._infos.get(path)
            if listed is not None and listed[0] == key:
                return listed[1]
        try:
            return self.get(path).info()
        except DatasetError as error:
            return DatasetInfo.broken(path.stem, "features", str(error))
