"""A run's test predictions, stored compactly beside its confusion matrix: class indices as
base64 of one byte each (two, little-endian, above 256 classes) — a few hundred bytes per run for
a test set of a few hundred samples, against about three bytes a sample as a JSON list."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..paired_statistics import RunPredictions
from .models import ConfusionMatrix, Run


def _dtype(n_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if n_classes <= 256 else np.dtype("<u2")


def pack_labels(labels: Sequence[int], n_classes: int) -> str:
    return base64.b64encode(np.asarray(labels, dtype=_dtype(n_classes)).tobytes()).decode()


def unpack_labels(packed: str, n_classes: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(packed), dtype=_dtype(n_classes)).astype(np.int64)


def load_predictions(session: Session, run_ids: Sequence[int]) -> dict[int, RunPredictions]:
    """The stored test predictions of these runs (those that have them), unpacked."""
    query = (select(ConfusionMatrix.run_id, ConfusionMatrix.classes, ConfusionMatrix.test_predictions,
                    ConfusionMatrix.test_labels)
             .where(ConfusionMatrix.run_id.in_(list(run_ids)), ConfusionMatrix.test_predictions.is_not(None),
                    ConfusionMatrix.test_labels.is_not(None)))
    return {run_id: RunPredictions(unpack_labels(predicted, len(classes)), unpack_labels(labels, len(classes)))
            for run_id, classes, predicted, labels in session.execute(query)}


class NoStoredPredictions(LookupError):
    """The run kept no test predictions: not finished, finished before they were kept, or
    logged from elsewhere without them."""


@dataclass(frozen=True)
class StoredPredictions:
    """What GET /api/runs/{id}/predictions serves: a run's test predictions with their setting."""

    run_id: int
    epoch: int
    classes: list[str]
    counted: str  # "samples", or "groups" (videos) where the run's accuracy is per group
    predictions: RunPredictions


def stored_predictions(session: Session, run_id: int) -> StoredPredictions:
    """One run's stored test predictions, in the order of its test set (raises
    NoStoredPredictions; the caller checked that the run exists)."""
    matrix = session.get(ConfusionMatrix, run_id)
    if matrix is None or matrix.test_predictions is None or matrix.test_labels is None:
        raise NoStoredPredictions(run_id)
    run = session.get(Run, run_id)
    grouped = run is not None and (run.info or {}).get("accuracy_level") == "group"
    n_classes = len(matrix.classes)
    return StoredPredictions(run_id, matrix.epoch, list(matrix.classes), "groups" if grouped else "samples",
                             RunPredictions(unpack_labels(matrix.test_predictions, n_classes),
                                            unpack_labels(matrix.test_labels, n_classes)))
