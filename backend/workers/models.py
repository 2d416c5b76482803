"""The live workers and their slots, in the database so that every host's API sees every
host's workers. A worker (one Celery node, one GPU) registers when it starts, refreshes its
heartbeat while it lives and removes itself when it stops; each slot (a process that trains
one run at a time, RUNS_PER_GPU of them per worker) says what it does."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..db import Base, UTCDateTime, utcnow


class SlotState:
    idle = "idle"
    waiting = "waiting"  # holds a run id, waiting for the worker's GPU to itself (an out-of-memory retry)
    training = "training"


class Worker(Base):
    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # the Celery node name
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    slots: Mapped[int] = mapped_column(Integer)
    threads_per_run: Mapped[int] = mapped_column(Integer)
    gpu: Mapped[str | None] = mapped_column(String(255))  # NVML's UUID; None on a CPU worker
    gpu_name: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # The methods it can train (their implementations import there) with their package and version,
    # name → {"distribution", "version"}; null: registered before workers said (the built-in ones).
    methods: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The methods registered there that it cannot train, name → why (docs/methods.md).
    method_errors: Mapped[dict[str, str] | None] = mapped_column(JSON)

    slot_rows: Mapped[list["WorkerSlot"]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", passive_deletes=True, order_by="WorkerSlot.slot")


class WorkerSlot(Base):
    __tablename__ = "worker_slots"

    worker: Mapped[str] = mapped_column(ForeignKey("workers.name", ondelete="CASCADE"), primary_key=True)
    slot: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0 … slots-1
    state: Mapped[str] = mapped_column(String(20), default=SlotState.idle)
    pid: Mapped[int | None] = mapped_column(Integer)
    # No foreign key: deleting a run must not wait on, or be refused by, a worker's bookkeeping.
    run_id: Mapped[int | None] = mapped_column(Integer)
    since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
