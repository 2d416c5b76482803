"""The experimental protocol of the paper (§3.2): a stratified 70/15/15 split by group, and
the seeded choice of which training groups lose their missing modality.

`protocol_for` gives, for a run's setting, exactly what missmod's workers train and test on: the
train/val/test indices, the missing mask, and the order in which test predictions are listed
(one per test group). A script that trains its own method on them is on missmod's protocol, and
its test predictions pair with missmod's runs (McNemar); the worker records the same `digest`.

Both depend only on the dataset and the seed, never on the method, so runs of different
methods with the same seed see the same split and the same missing samples (a paired
comparison). The missing choice is nested across rates: with one seed, the groups missing at
80% are among those missing at 90%.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .datasets import load_dataset
from .two_view import TwoViewData

SPLIT_FRACTIONS = (0.70, 0.15, 0.15)


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # sample indices
    val: np.ndarray
    test: np.ndarray


def _group_labels(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique groups and the label of each (all samples of a group share one label)."""
    unique, first = np.unique(groups, return_index=True)
    group_label = labels[first]
    inconsistent = np.unique(groups[labels != group_label[np.searchsorted(unique, groups)]])
    if len(inconsistent):
        raise ValueError(f"groups with more than one label, e.g. group {inconsistent[0]!r}")
    return unique, group_label


def stratified_group_split(labels: np.ndarray, groups: np.ndarray, seed: int) -> Split:
    """70/15/15 of the groups of each class (rounded, at least one group per part when the
    class has three or more), seeded; returns sample indices."""
    unique, group_label = _group_labels(labels, groups)
    rng = np.random.default_rng([seed, 0])
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in np.unique(group_label):
        members = rng.permutation(unique[group_label == cls])
        n = len(members)
        n_val = int(round(SPLIT_FRACTIONS[1] * n))
        n_test = int(round(SPLIT_FRACTIONS[2] * n))
        if n >= 3:
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        n_train = n - n_val - n_test
        parts[0].append(members[:n_train])
        parts[1].append(members[n_train : n_train + n_val])
        parts[2].append(members[n_train + n_val :])
    train, val, test = (np.flatnonzero(np.isin(groups, np.concatenate(p))) for p in parts)
    return Split(train=train, val=val, test=test)


def subject_split(labels: np.ndarray, groups: np.ndarray, subjects: np.ndarray, seed: int) -> Split:
    """70/15/15 of the subjects (actors), seeded: no subject's samples straddle two parts, so
    the test accuracy is on people never seen in training."""
    unique = np.unique(subjects)
    if len(unique) < 3:
        raise ValueError(f"a subject split needs at least three subjects, found {len(unique)}")
    members = np.random.default_rng([seed, 0]).permutation(unique)
    n = len(members)
    n_val = max(1, int(round(SPLIT_FRACTIONS[1] * n)))
    n_test = max(1, int(round(SPLIT_FRACTIONS[2] * n)))
    n_train = n - n_val - n_test
    parts = (members[:n_train], members[n_train : n_train + n_val], members[n_train + n_val :])
    train, val, test = (np.flatnonzero(np.isin(subjects, part)) for part in parts)
    return Split(train=train, val=val, test=test)


@dataclass(frozen=True)
class MissingChoice:
    """Boolean masks over the training samples."""

    y_missing: np.ndarray  # lost y: D_XZ
    x_missing: np.ndarray  # lost x instead: D_YZ (empty unless both modalities are partly missing)

    @property
    def complete(self) -> np.ndarray:
        return ~(self.y_missing | self.x_missing)


def choose_missing(labels: np.ndarray, groups: np.ndarray, train: np.ndarray, rate: float, seed: int,
                   other_rate: float = 0.0) -> MissingChoice:
    """Which training groups lose y (a fraction `rate`) and which lose x (`other_rate`).

    Within each class the training groups are put in a seeded random order: the first
    round(rate × n) lose y, the last round(other_rate × n) lose x, and at least one group stays
    complete, so eq. 5 always has a reference set and every class is seen with both
    modalities. Both choices are nested across rates (with one seed, the groups missing y at
    80% are among those missing y at 90%). The realised rates can differ slightly from the
    asked ones through rounding.
    """
    if not (0.0 <= rate < 1.0 and 0.0 <= other_rate < 1.0 and rate + other_rate < 1.0):
        raise ValueError(f"missing rates must be in [0, 1) with a sum below 1, got {rate} and {other_rate}")
    unique, group_label = _group_labels(labels[train], groups[train])
    rng = np.random.default_rng([seed, 1])
    lose_y, lose_x = [], []
    for cls in np.unique(group_label):
        members = rng.permutation(unique[group_label == cls])
        n = len(members)
        n_y = min(int(round(rate * n)), n - 1)
        n_x = min(int(round(other_rate * n)), n - 1 - n_y)
        lose_y.append(members[:n_y])
        lose_x.append(members[n - n_x :])
    train_groups = groups[train]
    return MissingChoice(y_missing=np.isin(train_groups, np.concatenate(lose_y)),
                         x_missing=np.isin(train_groups, np.concatenate(lose_x)))


class ProtocolSetting:
    """What decides a run's split and missing samples: any object with these attributes (a
    TrainSpec is one); `ProtocolKey` is the plain one for scripts."""

    dataset: str
    seed: int
    missing_rate: float
    other_missing_rate: float
    split_by: str


@dataclass(frozen=True)
class ProtocolKey:
    dataset: str
    seed: int = 0
    missing_rate: float = 0.0
    other_missing_rate: float = 0.0
    split_by: Literal["group", "subject"] = "group"


def split_and_missing(data: TwoViewData, setting: ProtocolSetting) -> tuple[Split, MissingChoice]:
    """The 70/15/15 split (by group or by subject) and which training samples lose a modality."""
    if setting.split_by == "subject":
        if data.subjects is None:
            raise ValueError(f"dataset {data.name!r} has no subjects: split it by group")
        split = subject_split(data.labels, data.groups, data.subjects, setting.seed)
    else:
        split = stratified_group_split(data.labels, data.groups, setting.seed)
    missing = choose_missing(data.labels, data.groups, split.train, setting.missing_rate, setting.seed,
                             setting.other_missing_rate)
    return split, missing


def digest_of(split: Split, missing: MissingChoice) -> str:
    """A fingerprint of a split and its missing mask: equal digests, same samples everywhere."""
    hashed = hashlib.sha256()
    for part in (split.train, split.val, split.test):
        hashed.update(np.asarray(part, dtype="<i8").tobytes())
        hashed.update(b"|")
    for mask in (missing.y_missing, missing.x_missing):
        hashed.update(np.asarray(mask, dtype=np.uint8).tobytes())
        hashed.update(b"|")
    return hashed.hexdigest()


@dataclass(frozen=True)
class Protocol:
    """A run's samples, as missmod's workers use them. Indices are rows of the dataset (of its
    `views` and `labels`); `y_missing[i]` (`x_missing[i]`) says whether training sample
    `train[i]` lost y (x). Test predictions are one per test group, in `test_groups` order (a
    video's segments count once, their probabilities averaged; without groups, one per test
    sample, in `test` order), with `test_labels` their true classes."""

    split: Split
    missing: MissingChoice
    test_groups: np.ndarray
    test_labels: np.ndarray
    classes: list[str]

    @property
    def train(self) -> np.ndarray:
        return self.split.train

    @property
    def val(self) -> np.ndarray:
        return self.split.val

    @property
    def test(self) -> np.ndarray:
        return self.split.test

    @property
    def y_missing(self) -> np.ndarray:
        return self.missing.y_missing

    @property
    def x_missing(self) -> np.ndarray:
        return self.missing.x_missing

    @property
    def digest(self) -> str:
        return digest_of(self.split, self.missing)

    def as_dict(self) -> dict[str, Any]:
        return {"train": self.train.tolist(), "val": self.val.tolist(), "test": self.test.tolist(),
                "y_missing": self.y_missing.tolist(), "x_missing": self.x_missing.tolist(),
                "test_groups": [g.item() if hasattr(g, "item") else g for g in self.test_groups],
                "test_labels": self.test_labels.tolist(), "classes": list(self.classes), "digest": self.digest}


def protocol_of(data: TwoViewData, setting: ProtocolSetting) -> Protocol:
    split, missing = split_and_missing(data, setting)
    test_groups, first = np.unique(data.groups[split.test], return_index=True)
    return Protocol(split, missing, test_groups, data.labels[split.test][first].astype(np.int64), list(data.classes))


def protocol_for(setting: ProtocolSetting, data_dir: Path | None = None, video=None) -> Protocol:
    """The split, missing mask and test order missmod's workers use for `setting` (a TrainSpec,
    a ProtocolKey): `protocol_for(ProtocolKey("digits", seed=0, missing_rate=0.9))`."""
    return protocol_of(load_dataset(setting.dataset, data_dir, video), setting)
