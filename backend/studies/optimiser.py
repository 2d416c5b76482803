"""Optuna, driven ask-and-tell from the database (docs/studies.md, "Where Optuna's state lives").

Each decision — the parameters of the next trial of an arm, whether to prune a trial after an
epoch, the figures of the study page — rebuilds the arm's Optuna study in memory from its trials'
rows (`TrialRecord`): their parameters, state, objective value (a validation accuracy), the
validation accuracy of each epoch, and the pruner's bookkeeping. Nothing else is told to Optuna,
so selection can never see a test figure: the records have no field for one.

Why not Optuna's RDB storage on the same database: our database already is the source of truth
for every trial (a trial is a run: its lease, its points, its resume after a kill -9), and a second
copy of the same state in Optuna's tables would disagree exactly when it matters — a worker killed
mid-trial leaves Optuna's trial RUNNING forever (or FAIL after Optuna's own heartbeat, which then
retries it as a new trial: counted twice) while our lease resumes the same run. Optuna's schema
would also share the migrations' `alembic_version` table with ours (it stamps and checks its own
revision there) and take table names (`studies`, `trials`) of its own. Rebuilding costs
milliseconds per decision (bench/study_throughput.py measures it), and the sampler stays
reproducible: its seed for trial n of arm a is derived from (sampler seed, a, n).

This module imports optuna (about a second): the API loads it on the first decision, not at start.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from .models import TrialState as OurState

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Optuna marks some of what this uses (constant_liar, create_trial with intermediate values) experimental.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

OPTUNA_STATES = {OurState.running: TrialState.RUNNING, OurState.complete: TrialState.COMPLETE,
                 OurState.pruned: TrialState.PRUNED, OurState.failed: TrialState.FAIL}


@dataclass(frozen=True)
class TrialRecord:
    """What Optuna is told of one trial: validation figures only."""

    number: int
    params: Mapping[str, Any]
    state: str  # backend.studies.models.TrialState
    value: float | None  # validation accuracy of the epoch the run selected (complete trials)
    intermediate: Mapping[int, float] = field(default_factory=dict)  # epoch → validation accuracy
    system_attrs: Mapping[str, Any] = field(default_factory=dict)


def distribution(spec: Mapping[str, Any]) -> BaseDistribution:
    """A stored distribution (training/search_space.py's shape) as Optuna's."""
    kind = spec["distribution"]
    if kind == "loguniform":
        return FloatDistribution(spec["low"], spec["high"], log=True)
    if kind == "uniform":
        return FloatDistribution(spec["low"], spec["high"])
    if kind == "int":
        return IntDistribution(spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False))
    if kind == "categorical":
        return CategoricalDistribution(list(spec["choices"]))
    raise ValueError(f"unknown distribution {kind!r}")


def distributions(space: Mapping[str, Mapping[str, Any]]) -> dict[str, BaseDistribution]:
    return {name: distribution(spec) for name, spec in space.items()}


def derived_seed(seed: int, *path: int) -> int:
    """A seed of its own for each (arm, trial) that depends only on the study's sampler seed."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


def make_sampler(config: Mapping[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    if config["name"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials run in parallel, so the running ones count as bad guesses rather than
    # being ignored, and the next ask does not pick the same region again.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.get("n_startup_trials", 10),
                                      constant_liar=True)


def make_pruner(config: Mapping[str, Any], epochs: int) -> optuna.pruners.BasePruner:
    name = config["name"]
    if name == "median":
        # Optuna prunes from step n_warmup_steps on (its steps count from 0); ours are epochs from 1.
        return optuna.pruners.MedianPruner(n_startup_trials=config.get("n_startup_trials", 5),
                                           n_warmup_steps=config.get("n_warmup_epochs", 5) + 1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=config.get("min_epochs", 5), max_resource=epochs,
                                              reduction_factor=config.get("reduction_factor", 3))
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class Arm:
    """One arm's search: its name (Hyperband's brackets hash it), space, sampler, pruner and budget."""

    name: str
    space: Mapping[str, Mapping[str, Any]]
    sampler: Mapping[str, Any]
    pruner: Mapping[str, Any]
    epochs: int
    index: int = 0


def rebuild(arm: Arm, records: Sequence[TrialRecord], sampler_seed: int | None = None,
            with_params: bool = True) -> optuna.Study:
    """The arm's Optuna study, in memory, holding `records` in trial-number order (so Optuna's
    numbers are ours). Without params (a pruner reads only states and per-epoch values), it is
    built several times faster: Optuna copies every trial's distributions as it adds it."""
    seed = arm.sampler.get("seed", 0) if sampler_seed is None else sampler_seed
    study = optuna.create_study(study_name=arm.name, direction="maximize", sampler=make_sampler(arm.sampler, seed),
                                pruner=make_pruner(arm.pruner, arm.epochs))
    space = distributions(arm.space)
    for record in sorted(records, key=lambda r: r.number):
        state = OPTUNA_STATES[OurState(record.state)]
        params = dict(record.params) if with_params else {}
        study.add_trial(create_trial(
            params=params, distributions={name: space[name] for name in params},
            state=state, value=record.value if state is TrialState.COMPLETE else None,
            intermediate_values={int(epoch): value for epoch, value in record.intermediate.items()},
            system_attrs=dict(record.system_attrs)))
    return study


def ask(arm: Arm, records: Sequence[TrialRecord]) -> dict[str, Any]:
    """The parameters of the arm's next trial (number len(records))."""
    number = len(records)
    study = rebuild(arm, records, derived_seed(arm.sampler.get("seed", 0), arm.index, number))
    trial = study.ask(distributions(arm.space))
    assert trial.number == number, (trial.number, number)
    return _plain(trial.params)


@dataclass(frozen=True)
class PruneDecision:
    prune: bool
    system_attrs: dict[str, Any]  # the trial's pruner bookkeeping after the decision


def judge(arm: Arm, records: Sequence[TrialRecord], number: int) -> PruneDecision:
    """Whether trial `number` (running, its intermediate values up to its last epoch) is to be
    pruned, as the arm's pruner decides given every other trial."""
    study = rebuild(arm, records, with_params=False)
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    prune = bool(study.pruner.prune(study, trial))
    after = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return PruneDecision(prune, _plain(after.system_attrs))


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe (numpy scalars from a sampler become Python numbers)."""
    return json.loads(json.dumps(dict(values), default=lambda v: v.item() if hasattr(v, "item") else str(v)))


# --- the study page's figures -------------------------------------------------------------

FIGURES = ("history", "intermediate", "parallel", "importances")


def _figure(make, study: optuna.Study) -> dict[str, Any] | None:
    figure = make(study)
    data = json.loads(figure.to_json())
    layout = data.get("layout", {})
    layout.pop("template", None)  # the page styles its charts itself
    return {"data": data.get("data", []), "layout": layout}


def figures(arm: Arm, records: Sequence[TrialRecord]) -> dict[str, dict[str, Any] | str]:
    """optuna.visualization's figures of the arm (Plotly JSON: data and layout), each or why it
    cannot be drawn yet (a string). Their traces are `scatter` and `bar`: the pages' plotly.js
    bundle holds both (frontend/vendor/README.md)."""
    from optuna import visualization

    study = rebuild(arm, records)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state is TrialState.COMPLETE]
    varying = [name for name in arm.space
               if len({repr(t.params.get(name)) for t in complete}) > 1]
    out: dict[str, dict[str, Any] | str] = {}
    makers = {"history": visualization.plot_optimization_history,
              "intermediate": visualization.plot_intermediate_values,
              "parallel": visualization.plot_parallel_coordinate,
              "importances": visualization.plot_param_importances}
    for name, make in makers.items():
        if name != "intermediate" and not complete:
            out[name] = "no trial has completed yet"
        elif name == "importances" and (len(complete) < 2 or not varying):
            out[name] = "parameter importances need two completed trials whose parameters differ"
        elif name == "intermediate" and not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
            out[name] = "no trial has finished an epoch yet"
        else:
            try:
                out[name] = _figure(make, study)
            except (ValueError, RuntimeError) as error:  # e.g. importances of constant values
                out[name] = f"cannot be drawn yet: {error}"
    return out


def trace_types(figure: Mapping[str, Any]) -> set[str]:
    return {trace.get("type", "scatter") for trace in figure.get("data", [])}
