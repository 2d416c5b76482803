"""The experimental protocol of the paper (§3.2): a stratified 70/15/15 split by group, and
the seeded choice of which training groups lose their missing modality.

Both depend only on the dataset and the seed, never on the method, so runs of different
methods with the same seed see the same split and the same missing samples (a paired
comparison). The missing choice is nested across rates: with one seed, the groups missing at
80% are among those missing at 90%.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
