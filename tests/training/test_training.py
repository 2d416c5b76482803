"""The training library on its own: it learns, it is deterministic, it reports what it did."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from training.spec import METHODS, TrainSpec
from training.train import (ALL_COMPLETE_REFERENCE_LIMIT, SpecError, Trainer, TrainingCallback, choose_reference_set,
                            stratified_batches, train)

from tests.support import ROOT


def digits_spec(**overrides) -> TrainSpec:
    fields = dict(dataset="digits", method="mle", fusion="add", missing_modality="bottom", missing_rate=0.8,
                  epochs=6, seed=0)
    fields.update(overrides)
    return TrainSpec(**fields)


class Collect(TrainingCallback):
    def __init__(self, stop_after: int | None = None):
        self.info, self.epochs, self.stop_after = None, [], stop_after

    def on_start(self, info):
        self.info = info

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, dict(metrics)))

    def should_stop(self):
        return self.stop_after is not None and len(self.epochs) >= self.stop_after


@pytest.mark.parametrize("method,fusion", [(m, f) for m, info in METHODS.items() for f in info.fusions])
def test_every_method_and_fusion_learns_digits(method, fusion):
    collect = Collect()
    result = train(digits_spec(method=method, fusion=fusion), collect)
    assert result.test_accuracy > 0.6, f"{method}/{fusion} reached only {result.test_accuracy:.3f} (chance is 0.1)"
    assert [e for e, _ in collect.epochs] == list(range(1, 7))
    assert set(collect.epochs[0][1]) == {"train_loss", "val_loss", "val_accuracy", "test_accuracy"}
    first_loss, last_loss = collect.epochs[0][1]["train_loss"], collect.epochs[-1][1]["train_loss"]
    assert last_loss < first_loss
    # the reported test accuracy is the one of the epoch chosen on validation accuracy
    chosen = dict(collect.epochs)[result.best_epoch]
    assert chosen["val_accuracy"] == max(m["val_accuracy"] for _, m in collect.epochs)
    assert chosen["test_accuracy"] == result.test_accuracy
    assert sum(map(sum, result.confusion_matrix)) == collect.info["n_test"]


def test_same_spec_and_seed_give_the_same_result():
    a = train(digits_spec(epochs=3, seed=7))
    b = train(digits_spec(epochs=3, seed=7))
    c = train(digits_spec(epochs=3, seed=8))
    assert a.test_accuracy == b.test_accuracy and a.confusion_matrix == b.confusion_matrix
    assert (a.test_accuracy, a.confusion_matrix) != (c.test_accuracy, c.confusion_matrix)


def test_reference_set_is_recorded():
    collect = Collect()
    train(digits_spec(epochs=1, reference_set="auto"), collect)
    assert collect.info["reference_set"] == "all_complete"
    assert collect.info["reference_set_size"] == collect.info["n_train_complete"]
    collect = Collect()
    train(digits_spec(epochs=1, reference_set="batch"), collect)
    assert collect.info["reference_set"] == "batch" and collect.info["reference_set_size"] is None
    collect = Collect()
    train(digits_spec(epochs=1, method="lower_bound"), collect)
    assert collect.info["reference_set"] == "none"


def check_stratified(kinds: list[np.ndarray], batch_size: int, seed: int = 0) -> list[np.ndarray]:
    batches = stratified_batches(kinds, batch_size, np.random.default_rng(seed))
    every_row = np.concatenate(kinds)
    assert sorted(np.concatenate(batches).tolist()) == sorted(every_row.tolist())  # each sample once an epoch
    assert all(np.isin(batch, kinds[0]).sum() >= 1 for batch in batches)  # a complete sample in every batch
    for rows in kinds:  # each kind spread evenly: its share of any two batches differs by one at most
        shares = [int(np.isin(batch, rows).sum()) for batch in batches]
        assert max(shares) - min(shares) <= 1, shares
    return batches


def check_stratified_without_complete(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    batches = stratified_batches([rows[:0], rows], batch_size, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == sorted(rows.tolist())
    return batches


def test_stratified_batches_hold_every_sample_once_and_a_complete_one_each():
    rng = np.random.default_rng(0)
    rows = rng.permutation(1000)
    # 5% complete (50), 80% missing y, 15% missing x, batches of 64: ceil(1000 / 64) = 16 batches
    batches = check_stratified([rows[:50], rows[50:850], rows[850:]], 64)
    assert len(batches) == 16 and max(map(len, batches)) <= 64
    # fewer complete samples than batches: one complete sample each, and the batches grow
    batches = check_stratified([rows[:5], rows[5:]], 64)
    assert len(batches) == 5 and [np.isin(b, rows[:5]).sum() for b in batches] == [1] * 5
    assert all(len(b) == 200 for b in batches)
    # no complete sample at all (methods that need none): plain batches
    assert len(check_stratified_without_complete(rows, 64)) == 16
    # the order is the seed's: the same seed, the same batches
    again = stratified_batches([rows[:50], rows[50:]], 64, np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(again, stratified_batches([rows[:50], rows[50:]], 64,
                                                                             np.random.default_rng(3))))


def test_high_missing_rate_with_batch_reference_set_trains():
    """At 95% missing, every stratified batch of the run still holds a complete sample for
    eq. 5 (the batches the loop draws are checked), and it learns."""
    drawn = []
    original = Trainer.epoch_batches

    def recorded(self, training_set):
        batches = original(self, training_set)
        drawn.append((batches, training_set.complete.cpu().numpy()))
        return batches

    with pytest.MonkeyPatch.context() as patch:  # watches the loop's own batches; changes nothing
        patch.setattr(Trainer, "epoch_batches", recorded)
        result = train(digits_spec(missing_rate=0.95, reference_set="batch", epochs=3, fusion="outer"))
    assert len(drawn) == 3
    for batches, complete in drawn:
        assert 0.04 < complete.mean() < 0.06
        assert all(complete[rows].any() for rows, _ in batches)  # each batch: its rows and its kinds' sizes
    assert result.test_accuracy > 0.5


def test_every_method_takes_the_same_number_of_optimiser_steps():
    """The README's fair comparison: same batch size, same number of optimiser steps an epoch,
    whether a method trains on every sample (stratified batches) or on the complete ones only
    (lower_bound cycles through them). Counted: one on_step per step with log_every_steps=1."""
    class Steps(TrainingCallback):
        def __init__(self):
            self.steps, self.info = [], None

        def on_start(self, info):
            self.info = info

        def on_step(self, epoch, step, metrics, progress):
            self.steps.append(step)

    counted = {}
    for method in METHODS:
        steps = Steps()
        train(digits_spec(method=method, epochs=2, log_every_steps=1, imputer_epochs=1, self_training_rounds=1),
              steps)
        per_epoch = steps.info["steps_per_epoch"]
        assert steps.steps == list(range(1, 2 * per_epoch + 1)), method
        counted[method] = per_epoch
    n_train = steps.info["n_train"]
    assert set(counted.values()) == {math.ceil(n_train / 64)}, counted


def test_the_reference_set_is_every_complete_sample_up_to_4096(tmp_path):
    """`auto` (the default): S = every complete training sample while there are at most 4,096 of
    them (feature vectors), else the complete samples of the batch."""
    assert ALL_COMPLETE_REFERENCE_LIMIT == 4096
    auto = digits_spec(reference_set="auto")
    assert choose_reference_set(auto, 4096) == "all_complete"
    assert choose_reference_set(auto, 4097) == "batch"
    assert choose_reference_set(digits_spec(reference_set="all_complete"), 10_000) == "all_complete"
    # a features dataset of 6,000 samples: 4,200 training samples, all complete above the limit,
    # 3,780 at 10% missing below it
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 6000)
    (tmp_path / "features").mkdir()
    np.savez(tmp_path / "features" / "six_thousand.npz", label=labels,
             left=(rng.normal(size=(6000, 4)) + labels[:, None]).astype(np.float32),
             right=rng.normal(size=(6000, 4)).astype(np.float32))
    for rate, choice in [(0.0, "batch"), (0.1, "all_complete")]:
        collect = Collect()
        train(TrainSpec(dataset="six_thousand", method="mle", missing_modality="right", missing_rate=rate, epochs=1,
                        batch_size=512), collect, data_dir=tmp_path)
        assert (collect.info["n_train_complete"] > 4096) == (choice == "batch"), collect.info["n_train_complete"]
        assert collect.info["reference_set"] == choice


def test_stop_request_ends_training_after_that_epoch():
    collect = Collect(stop_after=2)
    result = train(digits_spec(epochs=50), collect)
    assert result.stopped_early and result.epochs_completed == 2 and len(collect.epochs) == 2


def test_synthetic_run_reports_bayes_ceiling():
    collect = Collect()
    result = train(TrainSpec(dataset="synthetic", method="mle", missing_modality="y", missing_rate=0.0,
                             epochs=3, seed=0), collect)
    bayes = collect.info["bayes_test_accuracy"]
    assert set(bayes) == {"xy", "x", "y"}
    assert bayes["xy"] > bayes["x"] > bayes["y"] > 1 / 6
    assert result.test_accuracy <= bayes["xy"] + 0.05  # the test split's Bayes accuracy is a ceiling (up to noise)


def test_unknown_modality_is_a_spec_error():
    with pytest.raises(SpecError, match="missing_modality"):
        train(digits_spec(missing_modality="left"))


def test_command_line_trains_and_prints_json():
    completed = subprocess.run(
        [sys.executable, "-m", "training", "--dataset", "digits", "--method", "lower_bound",
         "--missing-modality", "top", "--missing-rate", "0.5", "--epochs", "2", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout)
    assert 0.5 < result["test_accuracy"] <= 1.0
    assert result["info"]["y_modality"] == "top"
    assert "epoch" in completed.stderr  # the progress bar


def test_command_line_rejects_an_invalid_spec():
    completed = subprocess.run(
        [sys.executable, "-m", "training", "--dataset", "digits", "--method", "zero_padding",
         "--fusion", "outer", "--missing-modality", "top", "--missing-rate", "0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2 and "not available for method 'zero_padding'" in completed.stderr


@pytest.mark.parametrize("method", ["mle", "ae2", "hgr"])
def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, method):
    spec = digits_spec(method=method, epochs=5, evaluate_missing=True, imputer_epochs=2)
    whole = Collect()
    uninterrupted = train(spec, whole)

    checkpoint = tmp_path / "run.ckpt"
    first_part = Collect(stop_after=2)
    train(spec, first_part, checkpoint_path=checkpoint)
    second_part = Collect()
    resumed = train(spec, second_part, checkpoint_path=checkpoint)

    assert second_part.info["resumed_from_epoch"] == 2
    assert [e for e, _ in first_part.epochs + second_part.epochs] == [1, 2, 3, 4, 5]
    assert first_part.epochs + second_part.epochs == whole.epochs  # identical curves, no gap, no repeat
    assert (resumed.test_accuracy, resumed.best_epoch, resumed.confusion_matrix) == (
        uninterrupted.test_accuracy, uninterrupted.best_epoch, uninterrupted.confusion_matrix)


class Checkpointed(Collect):
    """Which epochs were checkpointed (the loop calls before_checkpoint just before each), on a
    clock that advances a second per epoch; raises Killed while reporting epoch `kill_at`."""

    def __init__(self, clock: list[float], kill_at: int | None = None, **options):
        super().__init__(**options)
        self.clock, self.kill_at, self.checkpointed = clock, kill_at, []

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.kill_at:
            raise Killed()
        self.clock[0] += 1.0
        super().on_epoch_end(epoch, metrics)

    def before_checkpoint(self, epoch):
        self.checkpointed.append(epoch)


class Killed(Exception):
    pass


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """The checkpoint policy's clock, moved by the test's callbacks."""
    import training.train

    now = [0.0]
    policy = training.train.CheckpointPolicy
    monkeypatch.setattr(training.train, "CheckpointPolicy", lambda every: policy(every, clock=lambda: now[0]))
    return now


def test_checkpoints_are_written_at_most_every_so_often_and_always_after_the_last_epoch_and_at_a_stop(
        tmp_path, clock):
    spec = digits_spec(epochs=7)
    every_epoch, timed, rare, stopped = Checkpointed(clock), Checkpointed(clock), Checkpointed(clock), \
        Checkpointed(clock, stop_after=3)
    train(spec, every_epoch, checkpoint_path=tmp_path / "a.ckpt")
    train(spec, timed, checkpoint_path=tmp_path / "b.ckpt", checkpoint_every_seconds=3.0)
    train(spec, rare, checkpoint_path=tmp_path / "c.ckpt", checkpoint_every_seconds=3600.0)
    train(spec, stopped, checkpoint_path=tmp_path / "d.ckpt", checkpoint_every_seconds=3600.0)
    assert every_epoch.checkpointed == list(range(0, 8))
    assert timed.checkpointed == [0, 3, 6, 7]
    assert rare.checkpointed == [0, 7]
    assert stopped.checkpointed == [0, 3]
    assert every_epoch.epochs == timed.epochs == rare.epochs  # how often it saves changes nothing else


def test_a_run_killed_between_checkpoints_replays_the_epochs_since_the_last_and_ends_exactly_alike(
        tmp_path, clock):
    spec = digits_spec(epochs=6, evaluate_missing=True)
    whole = Collect()
    uninterrupted = train(spec, whole)

    checkpoint = tmp_path / "run.ckpt"
    killed = Checkpointed(clock, kill_at=5)
    with pytest.raises(Killed):
        train(spec, killed, checkpoint_path=checkpoint, checkpoint_every_seconds=3.0)
    assert killed.checkpointed == [0, 3] and [e for e, _ in killed.epochs] == [1, 2, 3, 4]
    second = Checkpointed(clock)
    resumed = train(spec, second, checkpoint_path=checkpoint, checkpoint_every_seconds=3.0)

    assert second.info["resumed_from_epoch"] == 3
    assert [e for e, _ in second.epochs] == [4, 5, 6]  # epoch 4 again: reported twice, stored once
    replayed = dict(killed.epochs[3:])
    assert all(dict(second.epochs)[e] == metrics for e, metrics in replayed.items())  # the same epoch, to the bit
    assert killed.epochs[:3] + second.epochs == whole.epochs
    assert (resumed.test_accuracy, resumed.best_epoch, resumed.test_predictions) == (
        uninterrupted.test_accuracy, uninterrupted.best_epoch, uninterrupted.test_predictions)


class Bundles:
    """A bundle target that keeps every write: the epoch each bundle names."""

    def __init__(self):
        self.epochs: list[int] = []

    def write_bytes(self, data: bytes) -> None:
        from training.bundle import load_model

        self.epochs.append(load_model(data).manifest["epoch"])


def test_the_bundle_is_written_with_the_checkpoints_and_at_the_end_not_at_every_selected_epoch(tmp_path, clock):
    """A fast run selects a new epoch every few epochs; its bundle is written with the next
    checkpoint (and when the run ends, however it ends), never more often, and always names
    the epoch the run reports as selected."""
    spec = digits_spec(epochs=7)
    every_epoch, rare = Bundles(), Bundles()
    selected = Checkpointed(clock)
    result = train(spec, selected, checkpoint_path=tmp_path / "a.ckpt", bundle_path=every_epoch)
    assert every_epoch.epochs[-1] == result.best_epoch
    assert every_epoch.epochs == sorted(set(every_epoch.epochs))  # one write per newly selected epoch
    rare_result = train(spec, Checkpointed(clock), checkpoint_path=tmp_path / "b.ckpt",
                        checkpoint_every_seconds=3600.0, bundle_path=rare)
    assert rare.epochs == [result.best_epoch] == [rare_result.best_epoch]  # once, at the last checkpoint

    killed, bundles = Checkpointed(clock, kill_at=5), Bundles()
    with pytest.raises(Killed):
        train(spec, killed, checkpoint_path=tmp_path / "c.ckpt", checkpoint_every_seconds=3600.0, bundle_path=bundles)
    assert len(bundles.epochs) == 1 and 1 <= bundles.epochs[0] <= 5  # a failing run keeps its latest selection


def test_a_checkpoint_of_another_spec_is_ignored(tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    train(digits_spec(epochs=2), checkpoint_path=checkpoint)
    collect = Collect()
    train(digits_spec(epochs=2, seed=5), collect, checkpoint_path=checkpoint)
    assert "resumed_from_epoch" not in collect.info and len(collect.epochs) == 2
