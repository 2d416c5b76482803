"""What every dataset is: two arrays of per-sample inputs (the modalities), integer labels,
class names, groups and, optionally, subjects.

Samples that share a group (the segments of one video) are split together, lose a modality
together, and have their class probabilities averaged into one group-level prediction.
Samples that share a subject (an actor) can be kept on one side of a subject-independent split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class DatasetError(ValueError):
    """A dataset that cannot be used, with a message that says why."""


class UnknownDatasetError(KeyError):
    def __str__(self) -> str:
        return f"unknown dataset {self.args[0]!r}"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    description: str
    source: str  # "builtin", "features" (an .npz in DATA_DIR/features), "video" (raw clips, preprocessed)
    modalities: tuple[str, ...]
    classes: tuple[str, ...]
    n_samples: int
    n_groups: int
    shapes: dict[str, tuple[int, ...]]
    class_counts: tuple[int, ...]
    has_subjects: bool = False
    error: str | None = None  # set when the dataset is listed but cannot be used
    preprocessed: bool | None = None  # raw-video datasets: whether the cache is ready (None: not applicable)

    @classmethod
    def broken(cls, name: str, source: str, error: str) -> "DatasetInfo":
        return cls(name=name, title=name, description="", source=source, modalities=(), classes=(), n_samples=0,
                   n_groups=0, shapes={}, class_counts=(), error=error)


@dataclass(frozen=True)
class TwoViewData:
    name: str
    title: str
    description: str
    views: dict[str, np.ndarray]
    labels: np.ndarray
    classes: tuple[str, ...]
    groups: np.ndarray
    subjects: np.ndarray | None = None
    source: str = "builtin"
    oracle: Any = field(default=None, compare=False)  # the true model, where known (synthetic data)

    def __post_init__(self) -> None:
        if len(self.views) != 2:
            raise DatasetError(f"a two-view dataset needs exactly two modalities, got {list(self.views)}")
        n = len(self.labels)
        for modality, values in self.views.items():
            if len(values) != n:
                raise DatasetError(f"modality {modality!r} has {len(values)} samples, labels have {n}")
        if len(self.groups) != n:
            raise DatasetError(f"groups have {len(self.groups)} entries, labels have {n}")
        if self.subjects is not None and len(self.subjects) != n:
            raise DatasetError(f"subjects have {len(self.subjects)} entries, labels have {n}")

    @property
    def modalities(self) -> tuple[str, str]:
        first, second = self.views
        return first, second

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name,
            title=self.title,
            description=self.description,
            source=self.source,
            modalities=self.modalities,
            classes=self.classes,
            n_samples=len(self.labels),
            n_groups=len(np.unique(self.groups)),
            shapes={m: tuple(v.shape[1:]) for m, v in self.views.items()},
            class_counts=tuple(int(c) for c in np.bincount(self.labels, minlength=len(self.classes))),
            has_subjects=self.subjects is not None,
        )
