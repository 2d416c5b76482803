"""The exactly-once check (bench/points.py) that the end-to-end, fault, hosts, slots and soak runs
rely on: the points it expects are the ones training really writes, and it fails when one point
is dropped, repeated, or stray."""

from __future__ import annotations

import pytest

from bench.points import assert_exactly_once, check_points, expected_points, logged_steps
from training.spec import TrainSpec
from training.train import TrainingCallback, train


class Written(TrainingCallback):
    """The points as the worker writes them (worker/executor.py): per-step ones at their global
    step, an epoch's metrics at the step the epoch ended."""

    def __init__(self):
        self.points: list[dict] = []
        self.steps_per_epoch = None

    def on_start(self, info):
        self.steps_per_epoch = info["steps_per_epoch"]

    def on_step(self, epoch, step, metrics, progress):
        self.points += [{"epoch": epoch, "step": step, "name": name, "value": v} for name, v in metrics.items()]

    def on_epoch_end(self, epoch, metrics):
        self.points += [{"epoch": epoch, "step": epoch * self.steps_per_epoch, "name": name, "value": v}
                        for name, v in metrics.items()]


def test_logged_steps_are_every_nth_and_each_epochs_last():
    assert logged_steps(2, 25, 10) == [10, 20, 25, 35, 45, 50]
    assert logged_steps(1, 3, 10) == [3]
    assert logged_steps(2, 4, 2) == [2, 4, 6, 8]


@pytest.mark.parametrize("spec", [
    {"method": "mle", "missing_rate": 0.9},  # with its two loss terms
    {"method": "mle", "missing_rate": 0.0, "log_every_steps": 7, "evaluate_missing": True},
    {"method": "lower_bound", "missing_rate": 0.5},  # one loss, no terms
])
def test_the_expected_points_are_exactly_what_training_writes(spec):
    spec = {"dataset": "digits", "fusion": "add", "missing_modality": "bottom", "epochs": 2, "seed": 0, **spec}
    written = Written()
    train(TrainSpec.model_validate(spec), written)
    expected = expected_points(spec, written.steps_per_epoch)
    assert check_points(written.points, expected).exact, check_points(written.points, expected)
    assert len(expected) == len(written.points) > 8 * 2


def test_a_dropped_a_repeated_or_a_stray_point_fails_the_check():
    spec = {"method": "mle", "missing_rate": 0.5, "epochs": 2, "log_every_steps": 2}
    expected = expected_points(spec, steps_per_epoch=3)
    points = [{"epoch": e, "step": s, "name": n, "value": 0.5} for e, s, n in sorted(expected)]
    # steps 2, 3 of epoch 1 and 5, 6 of epoch 2; 5 step metrics each, 4 epoch metrics per epoch
    assert len(expected) == 4 * 5 + 2 * 4
    assert_exactly_once(points, expected)

    dropped = points[:7] + points[8:]
    check = check_points(dropped, expected)
    assert not check.exact and check.missing == (sorted(expected)[7],) and not check.unexpected + check.repeated
    with pytest.raises(AssertionError, match="1 missing"):
        assert_exactly_once(dropped, expected)

    repeated = points + [dict(points[3])]
    check = check_points(repeated, expected)
    assert not check.exact and check.repeated == ((sorted(expected)[3], 2),) and not check.missing
    with pytest.raises(AssertionError, match="1 repeated"):
        assert_exactly_once(repeated, expected)

    # a point where none belongs: an epoch never asked for, or an epoch's metric at the wrong step
    for stray in ({"epoch": 3, "step": 9, "name": "val_loss"}, {"epoch": 1, "step": 2, "name": "val_loss"}):
        check = check_points(points + [stray], expected)
        assert check.unexpected == ((stray["epoch"], stray["step"], stray["name"]),) and not check.missing
        with pytest.raises(AssertionError, match="1 unexpected"):
            assert_exactly_once(points + [stray], expected)

    # the old check (no key repeats) passes every one of these but the repeat: it could not see them
    for broken in (dropped, points + [{"epoch": 3, "step": 9, "name": "val_loss"}]):
        keys = [(p["epoch"], p["step"], p["name"]) for p in broken]
        assert len(keys) == len(set(keys))
