"""A run's system metrics: GPU utilisation and memory, the training process's CPU and memory,
and samples per second, sampled by the worker while the run trains (worker/system_metrics.py)
and stored one row per (run, epoch, name) like the run's metric points, so a replayed epoch
writes nothing twice. A GPU figure is absent, not zero, on a host without an NVIDIA GPU."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, UniqueConstraint, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from ..db import Base, UTCDateTime, utcnow

BigIntId = BigInteger().with_variant(Integer(), "sqlite")

# What each name means; the API lists them with their unit.
SYSTEM_METRICS = {
    "gpu_utilization": ("%", "GPU busy time over the epoch (NVML), averaged"),
    "gpu_memory_used": ("MiB", "memory this process holds on its GPU (NVML), the epoch's peak"),
    "gpu_memory_total": ("MiB", "the GPU's memory"),
    "cpu_percent": ("%", "CPU time of the training process over the epoch, 100 = one core"),
    "rss": ("MiB", "resident memory of the training process, the epoch's peak"),
    "samples_per_second": ("samples/s", "training samples per second of the epoch's training steps"),
    "threads": ("threads", "CPU threads torch uses in this run (its share of the worker's cores)"),
}


class SystemMetricPoint(Base):
    __tablename__ = "system_metric_points"
    __table_args__ = (
        UniqueConstraint("run_id", "epoch", "name", name="uq_system_metric_points_run_epoch_name"),
        Index("ix_system_metric_points_run_id_id", "run_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


_INSERTS = {
    name: dialect.insert(SystemMetricPoint).on_conflict_do_nothing(index_elements=["run_id", "epoch", "name"])
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def record_system_points(session: Session, run_id: int, epoch: int, values: Mapping[str, float | None]) -> None:
    """Insert-or-ignore one epoch's figures; None or non-finite figures are left out (absent)."""
    now = utcnow()
    rows = [{"run_id": run_id, "epoch": epoch, "name": name, "value": float(value), "recorded_at": now}
            for name, value in values.items() if value is not None and math.isfinite(float(value))]
    if rows:
        connection = session.connection()
        connection.execute(_INSERTS[connection.dialect.name], rows)
    session.commit()


def system_points(session: Session, run_id: int) -> list[tuple[int, str, float]]:
    """(epoch, name, value), by epoch then name."""
    query = (select(SystemMetricPoint.epoch, SystemMetricPoint.name, SystemMetricPoint.value)
             .where(SystemMetricPoint.run_id == run_id)
             .order_by(SystemMetricPoint.epoch, SystemMetricPoint.name))
    return [tuple(row) for row in session.connection().execute(query).all()]
