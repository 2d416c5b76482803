"""Tables of runs, their metric points and their final confusion matrix."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint,
                        false)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..db import Base, StoredJSON, UTCDateTime, utcnow
from ..lifecycle.models import TERMINAL_STATES, Leased, State  # noqa: F401  (TERMINAL_STATES: read from here too)

# A BIGINT primary key on PostgreSQL; SQLite only auto-increments "INTEGER PRIMARY KEY".
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


# A run's states are those of every leased kind (backend/lifecycle).
RunState = State


# The spec fields copied into typed columns of a run, which people filter, sort and group by
# (and routes read, rather than the spec's JSON); the whole spec is the `spec` column.
SPEC_COLUMNS = ("dataset", "method", "fusion", "missing_modality", "missing_rate", "seed")


class Run(Leased, Base):
    """A training run. Its state, holder, heartbeat and cancel flag are the columns of
    lifecycle.models.Leased: a worker executes it under a lease (backend/lifecycle)."""

    __tablename__ = "runs"
    # A deleted run's id is never given to another run (SQLite reuses the highest id otherwise;
    # PostgreSQL's sequence never does).
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_runs_idempotency_key"),
                      {"sqlite_autoincrement": True})
    noun = "run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(StoredJSON)
    # Typed copies of the spec fields people filter and group by (SPEC_COLUMNS).
    dataset: Mapped[str] = mapped_column(String(200), index=True)
    method: Mapped[str] = mapped_column(String(50), index=True)
    fusion: Mapped[str] = mapped_column(String(20))
    missing_modality: Mapped[str] = mapped_column(String(100))
    missing_rate: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(Integer)

    # It ran out of memory while sharing its GPU with other runs (RUNS_PER_GPU > 1): it is trained
    # next on a slot of its own, its worker's other slots waiting meanwhile (worker/slots.py).
    needs_own_slot: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Queued, and no live worker can train its method: "no worker can train `X`" and why (a method
    # plugin no worker has installed, or one that fails to load there). Kept by the API
    # (backend/workers/service.py: mark_waiting_runs); null once a worker can.
    waiting_for_worker: Mapped[str | None] = mapped_column(String(1000))
    # Trained elsewhere and logged through POST /api/runs/external: never queued, never retried,
    # and never averaged with missmod's own runs (its own row in a sweep's table, marked).
    external: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    epochs_completed: Mapped[int] = mapped_column(Integer, default=0)
    test_accuracy: Mapped[float | None] = mapped_column(Float, index=True)  # sorting by it pages by keyset
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    info: Mapped[dict[str, Any] | None] = mapped_column(StoredJSON)
    # Where the worker is inside the current epoch (step, steps, samples/s, ETA), written with
    # each batch of points; shown while the run is running (RunOut.progress).
    progress: Mapped[dict[str, Any] | None] = mapped_column(StoredJSON)
    # The reproducibility record (training/reproducibility.py): what produced this run's numbers
    # (versions, commit, device, host, the method's plugin). NULL: made before it was kept.
    environment: Mapped[dict[str, Any] | None] = mapped_column(StoredJSON)
    # A script's `Idempotency-Key` on POST /api/runs: the same key again returns this run.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # Checkpoints of attempts up to this one are not resumed from (a retry starts over).
    resume_after_attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    # Deleting a sweep deletes its runs (the API can detach them first to keep them).
    sweep_id: Mapped[int | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="CASCADE", name="fk_runs_sweep_id_sweeps"), index=True
    )
    note: Mapped[str | None] = mapped_column(Text)
    tag_rows: Mapped[list["RunTag"]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", passive_deletes=True, order_by="RunTag.tag"
    )

    confusion: Mapped["ConfusionMatrix | None"] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.tag_rows]


class RunTag(Base):
    """One label on one run; a table rather than a JSON list so `?tag=` is an indexed lookup."""

    __tablename__ = "run_tags"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(50), primary_key=True, index=True)


class MetricPoint(Base):
    """One value of one metric: at the end of an epoch, or (series named `step/...`) every few
    optimiser steps. `step` is the global optimiser step (the end-of-epoch step for per-epoch
    points, 0 before training). Unique per (run, epoch, step, name), so a redelivered task that
    replays an epoch (its per-step points too) cannot add a second point."""

    __tablename__ = "metric_points"
    __table_args__ = (
        UniqueConstraint("run_id", "epoch", "step", "name", name="uq_metric_points_run_epoch_step_name"),
        Index("ix_metric_points_run_id_id", "run_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float | None] = mapped_column(Float)  # NULL: not finite (a diverged loss)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConfusionMatrix(Base):
    """Test-set confusion matrix at the epoch chosen on validation accuracy: rows are the
    true classes, columns the predicted ones, counted per group (video) where groups exist."""

    __tablename__ = "confusion_matrices"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[str]] = mapped_column(StoredJSON)
    counts: Mapped[list[list[int]]] = mapped_column(JSON)
    # The predicted and the true class of every test sample (video, where groups exist) at that
    # epoch, packed one byte per sample (backend/runs/predictions.py: pack_labels), so methods can be
    # compared sample by sample without retraining. NULL for runs finished before they were kept.
    test_predictions: Mapped[str | None] = mapped_column(Text)
    test_labels: Mapped[str | None] = mapped_column(Text)

    run: Mapped[Run] = relationship(back_populates="confusion")


class PredictionRequest(Base):
    """One prediction (POST /api/runs/{id}/predict, backend/runs/serving.py): the inputs the API
    checked, then the worker's answer, read and deleted by the API process that waits for it. The
    broker carries only its id, as it carries only run ids: inputs in a message would make it
    large, and the folder broker's reader can take a large message file before it is whole."""

    __tablename__ = "prediction_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the task id
    run_id: Mapped[int] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    inputs: Mapped[str] = mapped_column(Text)  # JSON: x and y as float32 in base64, with their shapes
    status: Mapped[int | None] = mapped_column(Integer)  # as the API answers it (200, 409, 422, 500); None: waiting
    body: Mapped[str | None] = mapped_column(Text)  # JSON, once answered
