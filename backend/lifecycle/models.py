"""The states and the columns every leased kind (a run, a dataset job) has."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar

from sqlalchemy import Boolean, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..db import UTCDateTime, utcnow


class State(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATES = frozenset({State.succeeded, State.failed, State.cancelled})


class Leased:
    """Mixin of an ORM model whose rows a worker executes under a lease (backend/lifecycle)."""

    noun: ClassVar[str]  # what one row is called in logs and errors ("run", "dataset job")
    # (and an integer primary key `id`, declared by each model)
    state: Mapped[str] = mapped_column(String(20), index=True, default=State.queued)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker: Mapped[str | None] = mapped_column(String(255))  # the holder: "<node>/<pid>"
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times a worker started it
    # Times it was taken from a worker that died (heartbeat stopped, or its process gone); past
    # RUN_MAX_RETRIES it fails instead of being queued again.
    worker_losses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Set while the row is queued in the database but its id may not have reached the broker
    # (the sender could die in between): the reconcile step sends it again after a while.
    awaiting_broker_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set when sending its id failed (the broker is down): the row stays queued, the page says it
    # waits for the broker, and the reconcile step sends it at its next pass. Why it failed.
    broker_error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    error_detail: Mapped[str | None] = mapped_column(Text)

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def awaiting_broker(self) -> bool:
        """Queued, saved, but its id could not be sent yet: the broker is down."""
        return self.state == State.queued and self.broker_error is not None


def describe_holder(row: Leased) -> str:
    when = row.heartbeat_at.strftime("%Y-%m-%d %H:%M:%S UTC") if row.heartbeat_at else "never"
    return f"worker {row.worker or '?'}, last heartbeat {when}"
