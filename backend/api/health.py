"""GET /api/health: is the database reachable, and the broker? GET /api/health/memory: what
this API process holds in memory."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text

from training.datasets import feature_cache_size

from .deps import SessionDep, SettingsDep, WorkQueueDep

router = APIRouter(tags=["health"])


@router.get("/api/health")
def health(session: SessionDep, queue: WorkQueueDep, settings: SettingsDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as error:
        checks["database"] = f"unreachable: {type(error).__name__}"
    try:
        with queue.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as error:
        checks["broker"] = f"unreachable: {type(error).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    body = {"status": "ok" if healthy else "degraded", **checks,
            "broker_transport": settings.broker_url.split(":", 1)[0],
            "database_backend": settings.database_url.split(":", 1)[0].split("+")[0]}
    return JSONResponse(body, status_code=200 if healthy else 503)


class CacheOut(BaseModel):
    bytes: int = Field(description="Of the cached data itself (bodies, arrays), not the bookkeeping around it")
    entries: int
    bound: int = Field(description="Most it holds, in bound_unit; least recently used out first above")
    bound_unit: Literal["bytes", "points", "entries"]


class MemoryOut(BaseModel):
    """What this API process holds in memory: a growing resident size with caches at their
    bounds is a leak, one with caches still filling may not be (`make soak` reports both)."""

    rss_bytes: int | None = Field(description="Resident memory of this process (Linux); null elsewhere")
    cached_bytes: int = Field(description="Sum of the caches' bytes")
    caches: dict[str, CacheOut] = Field(description="metrics_finished (finished runs' metrics answers, by ETag), "
                                                    "metrics_running (running runs' thinned columns), metrics_series "
                                                    "(recently read runs' series), features (parsed features files)")
    streams_held: int = Field(description="Live streams (runs, sweeps, workers) this process holds open")


def _rss_bytes() -> int | None:
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


@router.get("/api/health/memory", response_model=MemoryOut)
def memory(request: Request) -> MemoryOut:
    """What this API process holds in memory: its caches' bytes beside its resident size, and
    how many live streams it holds (needs the token, as every route but /api/health does)."""
    state = request.app.state
    caches = {name: CacheOut(**asdict(size)) for name, size in state.metrics_caches.sizes().items()}
    feature_bytes, feature_files, feature_bound = feature_cache_size()
    caches["features"] = CacheOut(bytes=feature_bytes, entries=feature_files, bound=feature_bound, bound_unit="bytes")
    return MemoryOut(rss_bytes=_rss_bytes(), cached_bytes=sum(cache.bytes for cache in caches.values()),
                     caches=caches, streams_held=state.stream_slots.held)
