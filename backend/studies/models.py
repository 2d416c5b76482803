"""A hyperparameter study and its trials (docs/studies.md).

A study compares candidates (a method with its fusion and options) on settings (missing
modality × rate) of one dataset; each (candidate, setting) pair is an *arm*, searched by an Optuna
study of its own with the same number of trials as every other arm. A trial is an ordinary run
(runs.id): it is queued, claimed, checkpointed, resumed and shown like any other. What Optuna needs
to know of a trial — its parameters, state, objective value, the validation accuracy of each epoch
and the pruner's bookkeeping — is kept here, in the database that is the source of truth, and the
Optuna study is rebuilt in memory from it for each decision (backend/studies/optimiser.py).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime, utcnow


class StudyState(StrEnum):
    searching = "searching"  # trials are being asked and trained
    final = "final"  # every arm spent its budget; the best configurations train over the final seeds
    finished = "finished"  # the final runs have all ended
    cancelled = "cancelled"


class TrialState(StrEnum):
    running = "running"  # asked; its run is queued or training
    complete = "complete"  # its run succeeded: its value is the validation accuracy it selected
    pruned = "pruned"  # stopped early by the pruner (its run ends cancelled, its points kept)
    failed = "failed"  # its run failed, was cancelled by someone, or deleted


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_studies_idempotency_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    state: Mapped[str] = mapped_column(String(20), default=StudyState.searching, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dataset: Mapped[str] = mapped_column(String(200))
    # The spec fields every trial and final run shares (epochs, batch size, encoder, ...).
    base_spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # [{"method", "fusion", "options": {field: value}, "space": {field: distribution}}]
    candidates: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # [{"missing_modality", "missing_rate"}]; arm k is candidate k // len(settings), setting k % len(settings).
    settings: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    trials_per_arm: Mapped[int] = mapped_column(Integer)
    sampler: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"name": "tpe"|"random", "seed": int}
    pruner: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"name": "none"|"median"|"hyperband", ...}
    parallel_trials: Mapped[int] = mapped_column(Integer)
    trial_seed: Mapped[int] = mapped_column(Integer)  # the seed every trial trains with
    final_seeds: Mapped[int] = mapped_column(Integer)  # the final runs: seeds 0 … final_seeds − 1
    # The final runs are a sweep (its table, CSV, LaTeX and paired statistics); kept if the sweep is deleted.
    final_sweep_id: Mapped[int | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="SET NULL", name="fk_studies_final_sweep_id_sweeps"))
    # The final runs' arms: {run id: arm}, so the study's table puts each run in its cell.
    final_runs: Mapped[dict[str, int] | None] = mapped_column(JSON)
    preset: Mapped[str | None] = mapped_column(String(50))
    preset_options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # Bumped by every change of the study's trials (an ask, the final runs): a change is one
    # conditional update on the version it read, so two processes advancing the same study at the
    # same moment cannot both ask (backend/studies/service.py).
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    @property
    def arms(self) -> int:
        return len(self.candidates) * len(self.settings)


class StudyTrial(Base):
    __tablename__ = "study_trials"
    __table_args__ = (
        # The budget's guard: trial numbers of an arm are 0 … trials_per_arm − 1, each once.
        UniqueConstraint("study_id", "arm", "number", name="uq_study_trials_study_arm_number"),
        UniqueConstraint("run_id", name="uq_study_trials_run_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    arm: Mapped[int] = mapped_column(Integer)
    number: Mapped[int] = mapped_column(Integer)
    # The run that trains it; NULL once that run is deleted (the trial then counts as failed).
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20), default=TrialState.running)
    # The objective: the validation accuracy of the epoch the run selected (never a test figure).
    value: Mapped[float | None] = mapped_column(Float)
    # {epoch: validation accuracy}, reported by the worker after each epoch (the pruner's input).
    intermediate: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    # The pruner's own bookkeeping on the trial (Hyperband's rungs), kept between decisions.
    system_attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    pruned_epoch: Mapped[int | None] = mapped_column(Integer)
    # Seconds spent choosing its parameters and deciding whether to prune it: the study's own cost.
    overhead_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
