"""The FastAPI application: `uvicorn --factory backend.main:create_app`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.trustedhost import TrustedHostMiddleware

from training.datasets import configure_features

from .api import errors, health, session
from .api.openapi import install_docs, operation_id
from .catalog import routes as catalog_routes
from .jobs import routes as job_routes
from .jobs.stream import JobTopic
from .live import Hub, StreamSlots
from .db import session_factory
from .migrate import pending_migrations
from .pages import routes as pages
from .queue import WorkQueue
from .runs import routes as run_routes
from .reconcile import reconcile_periodically
from .runs import system_routes
from .runs.metrics import MetricsCaches
from .runs.stream import RunTopic
from .security import AccessGuard, SignInThrottle
from .settings import Settings, get_settings
from .studies import outcomes as study_outcomes, routes as study_routes
from .sweeps import outcomes as sweep_outcomes, routes as sweep_routes
from .sweeps.stream import SweepTopic
from .workers import routes as worker_routes
from .workers.stream import WorkersTopic

log = logging.getLogger("missmod")


def _warn_if_open_to_the_network(settings: Settings) -> None:
    if settings.api_token is None and settings.listens_beyond_localhost:
        log.warning("\n%s\n  missmod listens on %s with NO API_TOKEN: anyone who can reach this port can start and "
                    "cancel runs and read every result.\n  Set API_TOKEN (e.g. `openssl rand -hex 32`) or listen on "
                    "127.0.0.1.\n%s", "!" * 100, settings.host, "!" * 100)


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
    configure_features(settings.feature_limits())
    sweep_outcomes.listen()  # a sweep hears of its runs' ends (backend/runs/outcomes.py)
    study_outcomes.listen()  # so does a study: its next trials, its final runs

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _warn_if_open_to_the_network(settings)
        _warn_if_not_migrated(settings)
        # The objects of start-up (modules, the app) live as long as the process: out of the
        # collector's full passes, which otherwise walked them all in the middle of requests
        # (a metrics page's p95 was 4-5× its p50 because of it; bench/api_views.py).
        gc.freeze()
        # The reconcile step, at start-up and then periodically (backend/reconcile.py): runs and dataset jobs.
        reconciler = asyncio.create_task(
            reconcile_periodically(settings, app.state.sessions, app.state.work_queue), name="reconcile")
        yield
        reconciler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconciler
        await app.state.live_hub.close()
        app.state.work_queue.close()

    app = FastAPI(
        title="missmod",
        summary="Multimodal learning with a missing modality: maximum likelihood and its baselines",
        version="0.1.0",
        lifespan=lifespan,
        max_body_size=settings.max_request_bytes,  # 413 above; a run spec is a few hundred bytes
        generate_unique_id_function=operation_id,
        docs_url=None, redoc_url=None,  # served from local files by install_docs
    )
    app.state.settings = settings
    # Every query of the API is bounded in time (STATEMENT_TIMEOUT, PostgreSQL); the workers' are not.
    app.state.sessions = session_factory(settings.database_url, settings.statement_timeout)
    app.state.work_queue = WorkQueue(settings)
    # The live streams' pollers and caps (backend/live.py).
    app.state.stream_slots = StreamSlots(settings.max_streams, settings.max_streams_per_client)
    # GET /api/runs/{id}/metrics (backend/runs/metrics.py)
    app.state.metrics_caches = MetricsCaches.bounded(settings.metrics_cache_bytes, settings.series_cache_points)
    app.state.live_hub = Hub(app.state.sessions, [
        RunTopic(settings.stream_poll_interval), SweepTopic(settings.stream_poll_interval),
        WorkersTopic(settings.stream_poll_interval, settings.heartbeat_timeout), JobTopic(settings.stream_poll_interval)])
    app.state.sign_in_throttle = SignInThrottle(settings.sign_in_attempts_per_minute)
    app.add_middleware(AccessGuard, settings=settings, database=app.state.sessions)
    # Outermost: a Host naming another server is refused (400) before anything else, which is
    # what stops DNS rebinding (a page of evil.example whose name now points here: its Origin
    # agrees with its Host, so only the name gives it away).
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts, www_redirect=False)

    errors.register(app)  # every error as problem details (backend/api/errors.py)
    app.include_router(health.router)
    app.include_router(session.router)
    app.include_router(catalog_routes.router)
    app.include_router(run_routes.router)
    app.include_router(run_routes.protocol_router)
    app.include_router(system_routes.router)
    app.include_router(worker_routes.router)
    app.include_router(sweep_routes.router)
    app.include_router(sweep_routes.presets_router)
    app.include_router(study_routes.router)
    app.include_router(job_routes.router)
    app.include_router(pages.router)
    install_docs(app)
    app.mount("/static", pages.VersionedStaticFiles(directory=pages.STATIC_DIR), name="static")
    return app
