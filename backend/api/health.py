"""GET /api/health: is the database reachable, and the broker?"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

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
