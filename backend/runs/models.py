"""Tables of runs, their metric points and their final confusion matrix."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..db import Base, UTCDateTime, utcnow

# A BIGINT primary key on PostgreSQL; SQLite only auto-increments "INTEGER PRIMARY KEY".
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class RunState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATES = frozenset({RunState.succeeded, RunState.failed, RunState.cancelled})


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_runs_idempotency_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Typed copies of the spec fields people filter and group by.
    dataset: Mapped[str] = mapped_column(String(200), index=True)
    method: Mapped[str] = mapped_column(String(50), index=True)
    fusion: Mapped[str] = mapped_column(String(20))
    missing_modality: Mapped[str] = mapped_column(String(100))
    missing_rate: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(Integer)

    state: Mapped[str] = mapped_column(String(20), index=True, default=RunState.queued)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times a worker started it
    # Times it was taken from a worker that died (heartbeat stopped, or its process gone); past
    # RUN_MAX_RETRIES the run fails instead of being queued again.
    worker_losses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Set while the run is queued in the database but its id may not have reached the broker
    # (the sender could die in between): the reconcile step sends it again after a while.
    awaiting_broker_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set when sending its id failed (the broker is down): the run stays queued, the page says it
    # waits for the broker, and the reconcile step sends it at its next pass. Why it failed.
    broker_error: Mapped[str | None] = mapped_column(Text)
    # A script's `Idempotency-Key` on POST /api/runs: the same key again returns this run.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # Checkpoints of attempts up to this one are not resumed from (a retry starts over).
    resume_after_attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    epochs_completed: Mapped[int] = mapped_column(Integer, default=0)
    test_accuracy: Mapped[float | None] = mapped_column(Float, index=True)  # sorting by it pages by keyset
    val_accuracy: Mapped[float | None] = mapped_column(Float)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    info: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    error_detail: Mapped[str | None] = mapped_column(Text)

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
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def awaiting_broker(self) -> bool:
        """Queued, saved, but its id could not be sent yet: the broker is down."""
        return self.state == RunState.queued and self.broker_error is not None

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.tag_rows]


class RunTag(Base):
    """One label on one run; a table rather than a JSON list so `?tag=` is an indexed lookup."""

    __tablename__ = "run_tags"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(50), primary_key=True, index=True)


class MetricPoint(Base):
    """One value of one metric at the end of one epoch. Unique per (run, epoch, name), so a
    redelivered task that replays an epoch cannot add a second point."""

    __tablename__ = "metric_points"
    __table_args__ = (
        UniqueConstraint("run_id", "epoch", "name", name="uq_metric_points_run_epoch_name"),
        Index("ix_metric_points_run_id_id", "run_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float | None] = mapped_column(Float)  # NULL: not finite (a diverged loss)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConfusionMatrix(Base):
    """Test-set confusion matrix at the epoch chosen on validation accuracy: rows are the
    true classes, columns the predicted ones, counted per group (video) where groups exist."""

    __tablename__ = "confusion_matrices"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[str]] = mapped_column(JSON)
    counts: Mapped[list[list[int]]] = mapped_column(JSON)

    run: Mapped[Run] = relationship(back_populates="confusion")


# The runs table refers to sweeps.id: whoever loads the run models gets the sweep table too.
from ..sweeps import models as _sweep_models  # noqa: E402,F401
