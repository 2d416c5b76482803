"""Shared fixtures: settings for the embedded default and for the real services, real worker
and server processes, and a real Chromium.

The services are this machine's Redis and PostgreSQL; a test that needs one fails (never
skips) when it is down, so CI cannot go green without them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

# The tests train tiny MLPs, fastest on one thread. With torch's default (a thread per core) on
# a small machine shared with other test runs, its threads spin against each other: an epoch
# that takes 0.06 s alone takes 2 s. Set before anything imports torch; the worker and server
# processes inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from backend.migrate import upgrade  # noqa: E402
from backend.settings import Settings  # noqa: E402

from .support import (CHROMIUM, CHROMIUM_ARGS, POSTGRES_ADMIN_URL, REDIS_URL, WORKER_TEST_ENV,  # noqa: E402
                      Process, ServerURL, free_port, settings_env)


# --- markers ----------------------------------------------------------------------------


def require_marker(request, marker: str, what: str) -> None:
    """A test that uses `what` must carry `marker`, so that `-m "not services"` (or "not
    browser") deselects every test that needs it: a missing marker fails the test at once."""
    if request.node.get_closest_marker(marker) is None:
        pytest.fail(f"{request.node.nodeid} uses {what} but is not marked @pytest.mark.{marker}", pytrace=False)


# --- settings ---------------------------------------------------------------------------


@pytest.fixture
def embedded_settings(tmp_path: Path) -> Settings:
    """The default: SQLite and the filesystem broker under a fresh VAR_DIR, migrated."""
    settings = Settings(var_dir=tmp_path / "var", database_url="", broker_url="", heartbeat_interval=1.0,
                        stream_poll_interval=0.1, task_queue="missmod")
    settings.make_dirs()
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def postgres_url(request) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards."""
    require_marker(request, "services", "PostgreSQL")
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"missmod_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not reachable: {error}")
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    from backend.db import engine_for

    engine_for.cache_clear()
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def redis_url(request) -> str:
    import redis

    require_marker(request, "services", "Redis")

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        client.ping()
    except Exception as error:
        pytest.fail(f"Redis at {REDIS_URL} is not reachable: {error}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def service_settings(tmp_path: Path, postgres_url: str, redis_url: str) -> Settings:
    """Production shape: PostgreSQL and Redis, with a queue of this test's own."""
    settings = Settings(var_dir=tmp_path / "var", database_url=postgres_url, broker_url=redis_url,
                        heartbeat_interval=1.0, stream_poll_interval=0.1,
                        task_queue=f"missmod-test-{uuid.uuid4().hex[:8]}")
    settings.make_dirs()
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def client_for():
    """TestClient factory over the real app for given settings."""
    from fastapi.testclient import TestClient

    from backend.main import create_app

    clients = []

    def make(settings: Settings) -> TestClient:
        # TestClient's requests name the host "testserver": trusted here as a real deployment
        # trusts its own name (TRUSTED_HOSTS).
        settings = settings.model_copy(update={"trusted_hosts": [*settings.trusted_hosts, "testserver"]})
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# --- processes --------------------------------------------------------------------------


@pytest.fixture
def start_worker(tmp_path: Path):
    """Start a real Celery worker process for the given settings; waits until it is ready."""
    processes: list[Process] = []

    def start(settings: Settings, extra_env: dict[str, str] | None = None, app: str = "worker.celery_app") -> Process:
        """`app`: the Celery app module (a test's own, to inject a fault into the real worker)."""
        node = f"test-{uuid.uuid4().hex[:6]}@%h"
        process = Process(
            [sys.executable, "-m", "celery", "-A", app, "worker", "--loglevel", "INFO",
             "--hostname", node, "--without-gossip", "--without-mingle"],
            {**settings_env(settings), **WORKER_TEST_ENV, **(extra_env or {})},
            tmp_path / f"worker-{len(processes)}.log",
        )
        processes.append(process)
        # Loading the training library (torch) took 81 s with eight test suites sharing 2 cores.
        process.wait_for_log(" ready.", timeout=180)
        return process

    yield start
    for process in processes:
        process.kill()


@pytest.fixture
def start_server(tmp_path: Path):
    """Start the API with uvicorn in its own process; returns its base URL."""
    processes: list[Process] = []

    def start(settings: Settings, port: int | None = None) -> str:
        """`port`: listen there (a restarted API on the same address the browser knows)."""
        port = port or free_port()
        process = Process(
            # A browser's open live stream would hold a graceful shutdown for as long as it stays.
            [sys.executable, "-m", "uvicorn", "--factory", "backend.main:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--timeout-graceful-shutdown", "2"],
            settings_env(settings), tmp_path / f"server-{len(processes)}.log",
        )
        processes.append(process)
        # Uvicorn binds its socket after the application's start-up: "running on" is when it accepts.
        process.wait_for_log("Uvicorn running on", timeout=60)
        return ServerURL(f"http://127.0.0.1:{port}", process)

    yield start
    for process in processes:
        process.stop()  # a fraction of a second; its coverage data (make coverage) is written on SIGTERM


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium package (apt-get install chromium)")
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture
def page(request, browser):
    require_marker(request, "browser", "Chromium")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.js_errors = errors
    yield page
    context.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible HTTP server on loopback (moto's), shared by the tests of a session;
    each test takes a bucket of its own (s3_server.new_bucket())."""
    from .support.object_store import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()
