"""The training library on its own: it learns, it is deterministic, it reports what it did."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from training.spec import METHODS, TrainSpec
from training.train import SpecError, TrainingCallback, train

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


def test_high_missing_rate_with_batch_reference_set_trains():
    """At 95% missing, every stratified batch still holds a complete sample for eq. 5."""
    result = train(digits_spec(missing_rate=0.95, reference_set="batch", epochs=3, fusion="outer"))
    assert result.test_accuracy > 0.5


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


def test_a_checkpoint_of_another_spec_is_ignored(tmp_path):
    checkpoint = tmp_path / "run.ckpt"
    train(digits_spec(epochs=2), checkpoint_path=checkpoint)
    collect = Collect()
    train(digits_spec(epochs=2, seed=5), collect, checkpoint_path=checkpoint)
    assert "resumed_from_epoch" not in collect.info and len(collect.epochs) == 2
