"""The split and the missing-modality simulation (paper §3.2)."""

from __future__ import annotations

import numpy as np
import pytest

from worker.training.datasets import load_dataset
from worker.training.protocol import choose_missing, stratified_group_split


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_split_is_70_15_15_disjoint_and_stratified(digits):
    split = stratified_group_split(digits.labels, digits.groups, seed=3)
    parts = [split.train, split.val, split.test]
    assert sum(map(len, parts)) == len(digits.labels)
    assert len(np.intersect1d(split.train, split.val)) == 0
    assert len(np.intersect1d(split.train, split.test)) == 0
    assert len(np.intersect1d(split.val, split.test)) == 0
    fractions = np.array([len(p) for p in parts]) / len(digits.labels)
    np.testing.assert_allclose(fractions, [0.70, 0.15, 0.15], atol=0.01)
    for part in parts:
        share = np.bincount(digits.labels[part], minlength=10) / len(part)
        np.testing.assert_allclose(share, np.bincount(digits.labels) / len(digits.labels), atol=0.01)


def test_split_depends_on_seed_only(digits):
    a = stratified_group_split(digits.labels, digits.groups, seed=1)
    b = stratified_group_split(digits.labels, digits.groups, seed=1)
    c = stratified_group_split(digits.labels, digits.groups, seed=2)
    np.testing.assert_array_equal(a.test, b.test)
    assert not np.array_equal(a.test, c.test)


def test_groups_never_straddle_splits():
    labels = np.repeat(np.arange(3), 40)
    groups = np.repeat(np.arange(30), 4)  # 30 "videos" of 4 segments, 10 per class
    split = stratified_group_split(labels, groups, seed=0)
    owners = [set(groups[p]) for p in (split.train, split.val, split.test)]
    assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])
    missing = choose_missing(labels, groups, split.train, 0.5, seed=0)
    for group in np.unique(groups[split.train]):
        in_group = groups[split.train] == group
        assert missing[in_group].all() or not missing[in_group].any()  # a video loses y in all its segments


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.8, 0.9, 0.95])
def test_missing_rate_is_realised_per_class(digits, rate):
    split = stratified_group_split(digits.labels, digits.groups, seed=0)
    missing = choose_missing(digits.labels, digits.groups, split.train, rate, seed=0)
    assert abs(missing.mean() - rate) < 0.01
    train_labels = digits.labels[split.train]
    for cls in range(10):
        assert (~missing[train_labels == cls]).sum() >= 1  # every class keeps a complete sample


def test_missing_sets_are_nested_across_rates(digits):
    split = stratified_group_split(digits.labels, digits.groups, seed=4)
    at = {r: choose_missing(digits.labels, digits.groups, split.train, r, seed=4) for r in (0.5, 0.8, 0.95)}
    assert np.all(at[0.8][at[0.5]]) and np.all(at[0.95][at[0.8]])


def test_rate_one_is_refused(digits):
    split = stratified_group_split(digits.labels, digits.groups, seed=0)
    with pytest.raises(ValueError):
        choose_missing(digits.labels, digits.groups, split.train, 1.0, seed=0)
