"""The FastAPI application: `uvicorn --factory backend.main:create_app`."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError

from .api import health
from .catalog import routes as catalog_routes
from .jobs import routes as job_routes
from .db import session_factory
from .migrate import pending_migrations
from .pages import routes as pages
from .queue import RunQueue
from .runs import routes as run_routes
from .settings import Settings, get_settings
from .sweeps import routes as sweep_routes

log = logging.getLogger("missmod")


def _warn_if_not_migrated(settings: Settings) -> None:
    try:
        current, head = pending_migrations(settings.database_url)
    except Exception as error:  # the database may be down at start-up; requests will say so
        log.warning("could not read the database revision: %s", error)
        return
    if current != head:
        log.warning("database is at revision %s but the code expects %s: run `make migrate`", current, head)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.make_dirs()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _warn_if_not_migrated(settings)
        yield
        app.state.run_queue.close()

    app = FastAPI(
        title="missmod",
        summary="Multimodal learning with a missing modality: maximum likelihood and its baselines",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessions = session_factory(settings.database_url)
    app.state.run_queue = RunQueue(settings)

    @app.exception_handler(OperationalError)
    async def database_unavailable(request: Request, error: OperationalError) -> JSONResponse:
        log.error("database error on %s %s: %s", request.method, request.url.path, error.orig)
        return JSONResponse({"detail": "the database is unreachable or not migrated; try again shortly"},
                            status_code=503)

    app.include_router(health.router)
    app.include_router(catalog_routes.router)
    app.include_router(run_routes.router)
    app.include_router(sweep_routes.router)
    app.include_router(sweep_routes.presets_router)
    app.include_router(job_routes.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=pages.FRONTEND_DIR / "static"), name="static")
    return app
