"""GET /api/runs/{run_id}/system: the run's system metrics (backend/runs/system.py)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..api.deps import SessionDep
from ..api.params import RunId
from . import service
from .system import SYSTEM_METRICS, system_points

router = APIRouter(prefix="/api/runs", tags=["runs"])


class SystemMetricOut(BaseModel):
    name: str
    unit: str
    description: str


class SystemPointOut(BaseModel):
    epoch: int
    name: str
    value: float


class SystemMetricsOut(BaseModel):
    metrics: list[SystemMetricOut] = Field(description="The names measured for this run (GPU ones only on a GPU)")
    latest: dict[str, float] = Field(description="Each name's figure at the latest epoch that has it")
    points: list[SystemPointOut] = Field(description="One per epoch and name")


@router.get("/{run_id}/system", response_model=SystemMetricsOut,
            responses={404: {"description": "No run with this id"}})
def get_system_metrics(run_id: RunId, session: SessionDep) -> SystemMetricsOut:
    """GPU utilisation and memory, the training process's CPU and memory, and samples per second,
    one figure per epoch. GPU figures are absent (not zero) for a run trained without a GPU."""
    service.get_run(session, run_id)
    points = system_points(session, run_id)
    latest = {name: value for _, name, value in points}  # by epoch: the last one wins
    names = [name for name in SYSTEM_METRICS if name in latest]
    return SystemMetricsOut(
        metrics=[SystemMetricOut(name=n, unit=SYSTEM_METRICS[n][0], description=SYSTEM_METRICS[n][1]) for n in names],
        latest=latest, points=[SystemPointOut(epoch=e, name=n, value=v) for e, n, v in points])
