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
breaks the other datasets. Files are read without pickle.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from ..two_view import DatasetError, DatasetInfo, TwoViewData

RESERVED_KEYS = ("label", "group", "subject", "classes")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


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


def _labels(arrays: dict[str, np.ndarray]) -> np.ndarray:
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
        if values.size and not np.all(np.isfinite(values)):
            row = int(np.argwhere(~np.isfinite(values.reshape(n, -1)))[0][0])
            raise DatasetError(f"modality '{name}' has NaN or infinite values (first in row {row})")
        views[name] = values.astype(np.float32, copy=False)
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


def read_features(path: Path, name: str | None = None) -> TwoViewData:
    """Load and check one features file; DatasetError says what is wrong."""
    name = name or path.stem
    if not NAME_PATTERN.match(name):
        raise DatasetError(f"file name {path.name!r}: a dataset name may hold letters, digits, '_', '.', '-'")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DatasetError(f"not a readable .npz file: {error}") from None
    labels = _labels(arrays)
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


class FeatureFileCache:
    """Parsed files, re-read when a file changes (size or modification time)."""

    def __init__(self):
        self._entries: dict[Path, tuple[tuple[int, int], TwoViewData | DatasetError]] = {}

    def get(self, path: Path) -> TwoViewData:
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        cached = self._entries.get(path)
        if cached is None or cached[0] != key:
            try:
                value: TwoViewData | DatasetError = read_features(path)
            except DatasetError as error:
                value = error
            self._entries[path] = (key, value)
            cached = self._entries[path]
        if isinstance(cached[1], DatasetError):
            raise cached[1]
        return cached[1]

    def info(self, path: Path) -> DatasetInfo:
        try:
            return self.get(path).info()
        except DatasetError as error:
            return DatasetInfo.broken(path.stem, "features", str(error))
