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


def choose_missing(labels: np.ndarray, groups: np.ndarray, train: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Boolean mask over `train`: True where the sample's group has lost the missing modality.

    Within each class, round(rate × groups) of the training groups are chosen, leaving each
    class at least one complete group, so eq. 5 always has a reference set and every class
    is seen with both modalities. The realised rate can therefore differ slightly from `rate`.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"missing rate must be in [0, 1), got {rate}")
    unique, group_label = _group_labels(labels[train], groups[train])
    rng = np.random.default_rng([seed, 1])
    missing_groups = []
    for cls in np.unique(group_label):
        members = rng.permutation(unique[group_label == cls])
        n_missing = min(int(round(rate * len(members))), len(members) - 1)
        missing_groups.append(members[:n_missing])
    return np.isin(groups[train], np.concatenate(missing_groups))
