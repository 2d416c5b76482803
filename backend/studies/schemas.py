"""What the study API accepts and returns (docs/studies.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from training.search_space import Distribution
from training.spec import FusionName, MethodName

from ..api.params import CleanInput, DisplayName
from ..sweeps.schemas import CellOut, ColumnOut, ComparisonOut

# The most trial runs one study may create (arms × trials per arm), as for a sweep.
MAX_TRIAL_RUNS = 5_000
# Fields of the spec that a study's request sets elsewhere (the setting, the method, the seed).
NOT_IN_SPEC = ("dataset", "method", "fusion", "missing_modality", "missing_rate", "seed", "name")


def _one_or_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


class CandidateIn(CleanInput):
    """One of the compared: a method with its fusion, any options fixed for it, and its space."""

    model_config = ConfigDict(extra="forbid")

    method: MethodName
    fusion: FusionName | None = Field(None, description="Default: the study's `fusion`")
    options: dict[str, Any] = Field(default_factory=dict, description="Spec fields fixed for this candidate only "
                                                                      "(e.g. an ablation of mle)")
    space: dict[str, Distribution | None] = Field(
        default_factory=dict, description="Replaces fields of its default space; null removes one")


class SamplerIn(CleanInput):
    model_config = ConfigDict(extra="forbid")

    name: Literal["tpe", "random"] = Field("tpe", description="TPE (Bayesian, the default) or random search")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="The sampler's seed: the same study asks the same "
                                                          "parameters given the same results")
    n_startup_trials: int = Field(10, ge=1, le=1000, description="TPE: random trials before it models the results "
                                                                 "(Optuna's default)")


class PrunerIn(CleanInput):
    model_config = ConfigDict(extra="forbid")

    name: Literal["none", "median", "hyperband"] = Field(
        "median", description="Stop a trial whose per-epoch validation accuracy falls behind: below the median "
                              "of the completed trials at the same epoch (median), or by successive halving in "
                              "brackets (hyperband); none trains every trial to its last epoch")
    n_startup_trials: int = Field(5, ge=0, le=1000, description="median: trials completed before any is pruned")
    # 5, not Optuna's 0: on digits the first epoch's validation accuracy said nothing of where a
    # trial ends (docs/studies.md, "Sampler, pruner, budget").
    n_warmup_epochs: int = Field(5, ge=0, le=10_000, description="median: no trial is pruned at or before this "
                                                                 "epoch")
    min_epochs: int = Field(5, ge=1, le=10_000, description="hyperband: the fewest epochs a trial trains (its "
                                                            "first rung)")
    reduction_factor: int = Field(3, ge=2, le=10, description="hyperband: 1/reduction_factor of the trials go "
                                                              "on at each rung")


class StudyCreate(CleanInput):
    """A study: the same search budget for every candidate at every setting, then the final runs."""

    model_config = ConfigDict(extra="forbid")

    name: DisplayName | None = Field(None, description="Default: derived from the candidates and the setting")
    dataset: str = Field(min_length=1, max_length=200)
    missing_modality: str | list[str] = Field(description="The modality that may be missing; a list for several "
                                                          "settings")
    missing_rate: float | list[float] = Field(description="A rate, or a list: each (modality, rate) is a setting "
                                                          "searched on its own")
    methods: list[MethodName | CandidateIn] = Field(min_length=1, max_length=50, description=(
        "The candidates: method names (with the study's fusion and their default spaces) or objects "
        "{method, fusion, options, space}"))
    fusion: FusionName = Field("add", description="The fusion of the candidates that do not name one")
    spec: dict[str, Any] = Field(default_factory=dict, description=(
        "Other spec fields every trial and final run shares (epochs, batch_size, encoder, selection_rule, …)"))
    space: dict[str, Distribution | None] = Field(default_factory=dict, description=(
        "Replaces fields of every candidate's default space (GET /api/studies/spaces); null removes one"))
    trials: int = Field(20, ge=1, le=1000, description="Trials per candidate and setting: the same for every one")
    sampler: SamplerIn = Field(default_factory=SamplerIn)
    pruner: PrunerIn = Field(default_factory=PrunerIn)
    parallel_trials: int = Field(2, ge=1, le=256, description=(
        "Trials in flight at once over the whole study (set it to the slots that will work on it): more makes "
        "the sampler guess with fewer results"))
    trial_seed: int = Field(0, ge=0, le=2**31 - 1, description="The seed every trial trains with (its split and "
                                                                "missing samples)")
    final_seeds: int = Field(5, ge=1, le=20, description="The best configuration of each candidate and setting "
                                                         "trains over seeds 0 … final_seeds − 1")

    @field_validator("missing_modality", "missing_rate")
    @classmethod
    def _distinct(cls, value: Any) -> Any:
        values = _one_or_list(value)
        if not values or len(values) > 20:
            raise ValueError("one to 20 values")
        if len({repr(v) for v in values}) != len(values):
            raise ValueError("a value is listed twice")
        if any(isinstance(v, float) and not 0.0 <= v < 1.0 for v in values):
            raise ValueError("a missing rate is in [0, 1)")
        if any(isinstance(v, str) and not 1 <= len(v) <= 100 for v in values):
            raise ValueError("a modality name has 1 to 100 characters")
        return value

    @field_validator("spec")
    @classmethod
    def _spec_fields(cls, spec: dict[str, Any]) -> dict[str, Any]:
        taken = [name for name in spec if name in NOT_IN_SPEC]
        if taken:
            raise ValueError(f"{', '.join(taken)}: set by the study's own fields, not in spec")
        return spec

    @model_validator(mode="after")
    def _not_too_many(self) -> "StudyCreate":
        runs = len(self.methods) * len(self.settings()) * self.trials
        if runs > MAX_TRIAL_RUNS:
            raise ValueError(f"{runs:,} trial runs; at most {MAX_TRIAL_RUNS:,} per study")
        return self

    def settings(self) -> list[dict[str, Any]]:
        return [{"missing_modality": modality, "missing_rate": float(rate)}
                for modality in _one_or_list(self.missing_modality) for rate in _one_or_list(self.missing_rate)]

    def candidates(self) -> list[CandidateIn]:
        return [CandidateIn(method=m) if isinstance(m, str) else m for m in self.methods]


class StudyPresetRequest(CleanInput):
    """A tuned preset on any dataset: `visual`/`audio` map the paper's modalities onto the dataset's."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(min_length=1, max_length=200)
    visual: str | None = Field(None, max_length=100)
    audio: str | None = Field(None, max_length=100)
    epochs: int = Field(30, ge=1, le=10_000)
    trials: int = Field(20, ge=1, le=1000)
    final_seeds: int = Field(5, ge=1, le=20)
    parallel_trials: int = Field(2, ge=1, le=256)
    sampler: SamplerIn = Field(default_factory=SamplerIn)
    pruner: PrunerIn = Field(default_factory=PrunerIn)
    name: DisplayName | None = None


class StudyPresetOut(BaseModel):
    name: str
    title: str
    description: str
    candidates: list[str]
    roles: list[str] = Field(description="The paper's modalities each missing (mapped onto the dataset's)")
    rates: list[float]


# --- what a study looks like ---------------------------------------------------------------


class ArmOut(BaseModel):
    """One candidate at one setting: its budget spent, and its best trial so far."""

    index: int
    candidate: int
    label: str = Field(description="The candidate, e.g. `mle (add)`")
    missing_modality: str
    missing_rate: float
    space: dict[str, Any]
    asked: int = Field(description="Trials asked so far (never more than trials_per_arm)")
    running: int
    complete: int
    pruned: int
    failed: int
    best_trial: int | None = Field(description="Number of the completed trial with the best validation accuracy "
                                               "(the earliest among ties)")
    best_value: float | None = Field(description="Its validation accuracy")
    best_params: dict[str, Any] | None


class StudyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    state: Literal["searching", "final", "finished", "cancelled"]
    created_at: datetime
    finished_at: datetime | None
    dataset: str
    base_spec: dict[str, Any]
    candidates: list[dict[str, Any]]
    settings: list[dict[str, Any]]
    trials_per_arm: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    parallel_trials: int
    trial_seed: int
    final_seeds: int
    final_sweep_id: int | None = Field(description="The sweep of the final runs, once every arm spent its budget")
    preset: str | None
    selection_rule: str = Field(description="How every trial and final run selects its epoch")
    arms: list[ArmOut]
    trials: dict[str, int] = Field(description="Trials per state over the whole study, and `total`, `budget`")
    overhead_seconds: float = Field(description="Time spent choosing parameters and deciding on pruning")


class StudyCreated(StudyOut):
    run_ids: list[int] = Field(description="The runs of the first trials")
    awaiting_broker: list[int] = Field(default_factory=list)


class StudyPage(BaseModel):
    items: list[StudyOut]
    total: int
    limit: int
    next_cursor: str | None = None


class TrialOut(BaseModel):
    """A trial as the study page shows it: validation figures only until the study is finished."""

    arm: int
    number: int
    run_id: int | None
    run_state: str | None
    state: Literal["running", "complete", "pruned", "failed"]
    params: dict[str, Any]
    value: float | None = Field(description="Validation accuracy of the epoch its run selected (the objective)")
    epochs: int = Field(description="Epochs it reported")
    intermediate: dict[int, float] = Field(description="Validation accuracy per epoch")
    pruned_epoch: int | None
    test_accuracy: float | None = Field(description="Hidden (null) until the study is finished: selection never "
                                                    "sees test")
    test_hidden: bool


class HyperparametersOut(BaseModel):
    """The configuration chosen for one cell of the final table."""

    trial: int | None
    value: float | None = Field(description="The trial's validation accuracy")
    params: dict[str, Any] | None


class StudyRowOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    label: str
    method: str
    fusion: str
    extras: dict[str, Any]
    cells: list[CellOut]
    hyperparameters: list[HyperparametersOut] = Field(description="Per column, the chosen hyperparameters")

    @field_validator("extras", mode="before")
    @classmethod
    def _pairs(cls, extras: Any) -> Any:
        return dict(extras)


class StudyTableOut(BaseModel):
    study_id: int
    final_sweep_id: int | None
    metric: str = "test_accuracy"
    selection_rule: str
    columns: list[ColumnOut]
    rows: list[StudyRowOut]
    comparison: ComparisonOut | None
