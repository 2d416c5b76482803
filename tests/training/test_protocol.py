"""The split and the missing-modality simulation (paper §3.2)."""

from __future__ import annotations

import numpy as np
import pytest

from training.datasets import load_dataset
from training.protocol import choose_missing, stratified_group_split, subject_split


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
    missing = choose_missing(labels, groups, split.train, 0.5, seed=0).y_missing
    for group in np.unique(groups[split.train]):
        in_group = groups[split.train] == group
        assert missing[in_group].all() or not missing[in_group].any()  # a video loses y in all its segments


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.8, 0.9, 0.95])
def test_missing_rate_is_realised_per_class(digits, rate):
    split = stratified_group_split(digits.labels, digits.groups, seed=0)
    missing = choose_missing(digits.labels, digits.groups, split.train, rate, seed=0).y_missing
    assert abs(missing.mean() - rate) < 0.01
    train_labels = digits.labels[split.train]
    for cls in range(10):
        assert (~missing[train_labels == cls]).sum() >= 1  # every class keeps a complete sample


def test_missing_sets_are_nested_across_rates(digits):
    split = stratified_group_split(digits.labels, digits.groups, seed=4)
    at = {r: choose_missing(digits.labels, digits.groups, split.train, r, seed=4).y_missing for r in (0.5, 0.8, 0.95)}
    assert np.all(at[0.8][at[0.5]]) and np.all(at[0.95][at[0.8]])


def test_rate_one_is_refused(digits):
    split = stratified_group_split(digits.labels, digits.groups, seed=0)
    with pytest.raises(ValueError):
        choose_missing(digits.labels, digits.groups, split.train, 1.0, seed=0)
    with pytest.raises(ValueError):
        choose_missing(digits.labels, digits.groups, split.train, 0.6, seed=0, other_rate=0.4)


def test_both_modalities_partly_missing_are_disjoint_and_nested(digits):
    split = stratified_group_split(digits.labels, digits.groups, seed=2)
    a = choose_missing(digits.labels, digits.groups, split.train, 0.5, seed=2, other_rate=0.3)
    b = choose_missing(digits.labels, digits.groups, split.train, 0.6, seed=2, other_rate=0.35)
    assert not np.any(a.y_missing & a.x_missing)
    assert abs(a.y_missing.mean() - 0.5) < 0.01 and abs(a.x_missing.mean() - 0.3) < 0.01
    assert np.all(b.y_missing[a.y_missing]) and np.all(b.x_missing[a.x_missing])
    assert a.complete.sum() == len(split.train) - a.y_missing.sum() - a.x_missing.sum()


def test_subject_split_keeps_each_subject_on_one_side():
    labels = np.tile(np.arange(4), 50)
    subjects = np.repeat(np.arange(20), 10)
    split = subject_split(labels, np.arange(200), subjects, seed=1)
    owners = [set(subjects[p]) for p in (split.train, split.val, split.test)]
    assert [len(o) for o in owners] == [14, 3, 3]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
