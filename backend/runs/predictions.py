"""A run's test predictions, stored compactly beside its confusion matrix: class indices as
base64 of one byte each (two, little-endian, above 256 classes) — a few hundred bytes per run for
a test set of a few hundred samples, against about three bytes a sample as a JSON list."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np


def _dtype(n_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if n_classes <= 256 else np.dtype("<u2")


def pack_labels(labels: Sequence[int], n_classes: int) -> str:
    return base64.b64encode(np.asarray(labels, dtype=_dtype(n_classes)).tobytes()).decode()


def unpack_labels(packed: str, n_classes: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(packed), dtype=_dtype(n_classes)).astype(np.int64)
