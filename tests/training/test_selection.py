"""The selection rule (training/selection.py): which epoch a run reports.

- each rule picks what it says, ties included, and the default is the comparison the loop made
  before rules existed (the best validation accuracy, the first epoch to reach it);
- the loop's choice while training equals the rule applied afterwards to the epochs it reported:
  what lets the API read a comparison under every rule without retraining;
- a spec at the default rule has the fingerprint it had before the option (its old checkpoints
  resume), and a checkpoint's best epoch of four entries (before the validation loss was kept) loads.
"""

from __future__ import annotations

import numpy as np
import pytest

from training.checkpoint import spec_fingerprint
from training.selection import DEFAULT_SELECTION_RULE, SELECTION_RULES, EpochScore, select_epoch
from training.spec import TrainSpec
from training.train import BestEpoch, Evaluation, TrainingCallback, train

# val accuracy ties at 0.9 (epochs 2 and 4); the lowest loss is at epoch 3.
EPOCHS = [EpochScore(1, 0.80, 0.70), EpochScore(2, 0.90, 0.50), EpochScore(3, 0.85, 0.40),
          EpochScore(4, 0.90, 0.45), EpochScore(5, 0.88, float("nan"))]


@pytest.mark.parametrize("rule, epoch", [("val_accuracy_earliest", 2), ("val_accuracy_latest", 4), ("val_loss", 3),
                                         ("last_epoch", 5)])
def test_each_rule_picks_its_epoch_ties_and_diverged_losses_included(rule, epoch):
    assert select_epoch(rule, EPOCHS).epoch == epoch
    assert select_epoch(rule, reversed(EPOCHS)).epoch == epoch  # read in epoch order whatever order given
    assert select_epoch(rule, []) is None


def test_the_default_is_the_rule_every_run_used_before_it_existed():
    assert DEFAULT_SELECTION_RULE == "val_accuracy_earliest"
    best = None
    for score in EPOCHS:  # the loop as it was: `if best is None or val.accuracy > best.val_accuracy`
        if best is None or score.val_accuracy > best.val_accuracy:
            best = score
    assert select_epoch(DEFAULT_SELECTION_RULE, EPOCHS) == best


class Recorder(TrainingCallback):
    def __init__(self):
        self.epochs: list[dict[str, float]] = []

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append({"epoch": epoch, **metrics})


def test_the_loop_reports_the_epoch_each_rule_selects_from_the_epochs_it_reported():
    """One tiny digits run per rule: training is the same, only the reported epoch differs, and it
    is the rule applied to the run's own per-epoch points (so the API can apply any rule later)."""
    spec = {"dataset": "digits", "method": "zero_padding", "missing_modality": "bottom", "missing_rate": 0.9,
            "epochs": 6, "seed": 1, "lr": 0.01}
    reports = {}
    for rule in SELECTION_RULES:
        recorder = Recorder()
        result = train(TrainSpec(**spec, selection_rule=rule), recorder)
        scores = [EpochScore(e["epoch"], e["val_accuracy"], e["val_loss"]) for e in recorder.epochs]
        chosen = select_epoch(rule, scores)
        assert result.best_epoch == chosen.epoch, rule
        assert result.test_accuracy == recorder.epochs[chosen.epoch - 1]["test_accuracy"]
        assert result.val_accuracy == chosen.val_accuracy
        reports[rule] = recorder.epochs
    assert all(epochs == reports[DEFAULT_SELECTION_RULE] for epochs in reports.values())  # same training


def test_the_default_rule_keeps_fingerprints_and_old_checkpoints():
    spec = TrainSpec(dataset="digits", method="mle", missing_modality="bottom", missing_rate=0.9)
    before = {k: v for k, v in spec.model_dump().items() if k != "selection_rule"}  # a spec from before the option
    assert spec_fingerprint(spec.model_dump()) == spec_fingerprint(before)
    other = spec.model_copy(update={"selection_rule": "val_loss"})
    assert spec_fingerprint(other.model_dump()) != spec_fingerprint(before)  # its checkpoints are its own
    test = Evaluation(0.9, 0.9, 0.3, np.eye(2, dtype=int))
    old = [0.93, 7, test.to_state(), None]  # a checkpoint's best epoch before the validation loss was kept
    restored = BestEpoch.from_state(old)
    assert (restored.val_accuracy, restored.epoch, restored.val_loss) == (0.93, 7, None)
    assert BestEpoch.from_state(BestEpoch(0.93, 7, test, None, 0.25).to_state()).val_loss == 0.25
