"""Optuna rebuilt from the database decides as Optuna kept in memory would (backend/studies/
optimiser.py): the same trials reported epoch by epoch, the median and the Hyperband pruner prune
the same trials at the same epochs whether one Optuna study lives through them all or a fresh one
is rebuilt from the records (states, per-epoch values, the pruner's bookkeeping) for each decision;
and the sampler asks the same parameters of the same records (its seed derived from the arm and
the trial number), always inside the space."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from backend.studies.optimiser import Arm, TrialRecord, ask, judge

SPACE = {"lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-2},
         "hidden_dim": {"distribution": "categorical", "choices": [64, 128, 256]},
         "imputer_epochs": {"distribution": "int", "low": 10, "high": 60, "step": 5},
         "weight_decay": {"distribution": "uniform", "low": 0.0, "high": 0.1}}
EPOCHS = 9
PRUNERS = [{"name": "median", "n_startup_trials": 2, "n_warmup_epochs": 1},
           {"name": "hyperband", "min_epochs": 1, "reduction_factor": 3}]


def curves(n_trials: int) -> list[list[float]]:
    """Per-epoch validation accuracies: each trial its own level, noisy, rising."""
    rng = np.random.default_rng(7)
    return [list(np.clip(rng.uniform(0.3, 0.9) + np.cumsum(rng.normal(0.01, 0.03, EPOCHS)), 0, 1))
            for _ in range(n_trials)]


@pytest.mark.parametrize("pruner", PRUNERS, ids=lambda p: p["name"])
def test_a_pruner_rebuilt_for_each_decision_prunes_as_one_kept_in_memory(pruner):
    arm = Arm(name="missmod-study-1-arm-0", space=SPACE, sampler={"name": "random", "seed": 0}, pruner=pruner,
              epochs=EPOCHS)
    params = {"lr": 1e-3, "hidden_dim": 128, "imputer_epochs": 30, "weight_decay": 0.01}
    from backend.studies.optimiser import make_pruner

    live = optuna.create_study(study_name=arm.name, direction="maximize", pruner=make_pruner(pruner, EPOCHS),
                               sampler=optuna.samplers.RandomSampler(seed=0))
    records: list[TrialRecord] = []
    pruned_live, pruned_rebuilt = [], []
    for number, curve in enumerate(curves(12)):
        trial = live.ask()
        state, kept, attrs = "complete", {}, {}
        for epoch, value in enumerate(curve, 1):
            trial.report(value, epoch)
            kept[epoch] = value
            rebuilt = judge(arm, [*records, TrialRecord(number, params, "running", None, dict(kept), attrs)], number)
            attrs = rebuilt.system_attrs
            live_says = trial.should_prune()
            assert rebuilt.prune == live_says, (number, epoch)
            if live_says:
                live.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned_live.append((number, epoch))
                pruned_rebuilt.append((number, epoch))
                state = "pruned"
                break
        if state == "complete":
            live.tell(trial, curve[-1])
        records.append(TrialRecord(number, params, state, curve[-1] if state == "complete" else None, kept, attrs))
    assert pruned_live  # the comparison covered prunings, not only "go on"


def test_the_sampler_asks_the_same_parameters_of_the_same_records_inside_the_space():
    arm = Arm(name="missmod-study-1-arm-2", space=SPACE, sampler={"name": "tpe", "seed": 3, "n_startup_trials": 3},
              pruner={"name": "none"}, epochs=EPOCHS, index=2)
    records: list[TrialRecord] = []
    for number, curve in enumerate(curves(8)):
        params = ask(arm, records)
        assert params == ask(arm, records)  # reproducible: the seed is (sampler seed, arm, trial number)
        assert 1e-4 <= params["lr"] <= 1e-2 and params["hidden_dim"] in (64, 128, 256)
        assert params["imputer_epochs"] in range(10, 61, 5) and 0.0 <= params["weight_decay"] <= 0.1
        records.append(TrialRecord(number, params, "complete", curve[-1], dict(enumerate(curve, 1))))
    assert len({repr(r.params) for r in records}) == len(records)  # no two trials asked the same point
    other = Arm(**{**arm.__dict__, "index": 3})
    assert ask(other, records[:1]) != ask(arm, records[:1])  # another arm draws its own
