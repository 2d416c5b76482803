"""A sweep: a named set of runs expanded from a grid (or a paper preset). The runs point to
their sweep (runs.sweep_id); progress and results are always read from the runs themselves,
so a retried or deleted run is reflected at once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, StoredJSON, UTCDateTime, utcnow


class Sweep(Base):
    __tablename__ = "sweeps"
    # A deleted sweep's id is never given to another sweep (as runs': SQLite reuses the highest
    # id otherwise, and a link or a script holding it would see another sweep).
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_sweeps_idempotency_key"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # What was asked, field → list of values, so the sweep can be read back and re-created.
    grid: Mapped[dict[str, Any]] = mapped_column(StoredJSON)
    # Set when the sweep reproduces a paper experiment (see backend/sweeps/presets.py).
    preset: Mapped[str | None] = mapped_column(String(50))
    # The preset request: which real modality plays the paper's "visual" and "audio", seeds,
    # epochs, and what was left out because the training library lacks it.
    preset_options: Mapped[dict[str, Any] | None] = mapped_column(StoredJSON)
    # A script's `Idempotency-Key` on POST /api/sweeps: the same key again returns this sweep.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # When its last run finished; cleared when a run of it is queued again. Set by one
    # conditional update, so the sweep-finished notification goes out once.
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
