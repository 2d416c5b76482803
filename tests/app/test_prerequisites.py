"""`make test` provides what the suite needs outside Python, or stops at once with one line
(tests/prerequisites.py). They run as root, as `make test` does on CI. This machine has everything, and other tests need it, so nothing is
uninstalled here: a PATH without chromium and docker-compose makes them missing (and, without apt-get,
impossible to install), a Redis port nobody listens on makes Redis down, and a database
name nobody created makes the database missing. Starting Redis and creating the database are
done for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest
import redis
from sqlalchemy import create_engine, text

from tests.support import POSTGRES_ADMIN_URL, ROOT, free_port

pytestmark = pytest.mark.services


def prerequisites(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tests.prerequisites", *args]
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)


def bare_path(folder, *tools: str) -> dict[str, str]:
    """An environment whose PATH has only these tools: no chromium, no docker-compose."""
    folder.mkdir()
    for tool in tools:
        (folder / tool).symlink_to(shutil.which(tool))
    return {"PATH": str(folder), "MISSMOD_TEST_CHROMIUM": ""}


def test_as_root_the_missing_browser_and_compose_are_installed_with_apt(tmp_path):
    completed = prerequisites("--dry-run", env=bare_path(tmp_path / "bin", "apt-get"))
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == ("make test would: apt-get install --no-install-recommends chromium "
                                        "docker-compose")


def test_where_nothing_can_install_them_the_run_stops_at_once_with_one_line(tmp_path):
    """No apt-get (another system), as without root: nothing to install them with."""
    completed = prerequisites(env=bare_path(tmp_path / "bin"))
    assert completed.returncode == 2 and completed.stdout == ""
    [line] = completed.stderr.splitlines()
    assert line.startswith("make test cannot run here; install: Chromium (Debian: apt-get install")
    assert "docker-compose (Debian: apt-get install --no-install-recommends docker-compose)" in line


def test_a_redis_that_is_down_is_started():
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    planned = prerequisites("--dry-run", env={"MISSMOD_TEST_REDIS_URL": url})
    assert planned.returncode == 0 and f"redis-server --daemonize yes --bind 127.0.0.1 -::1 --port {port}" in planned.stdout
    try:
        completed = prerequisites(env={"MISSMOD_TEST_REDIS_URL": url})
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.strip() == "make test: starting redis-server"
        assert redis.Redis.from_url(url).ping()
    finally:
        try:
            redis.Redis.from_url(url).shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the shutdown closes the connection it came on, or it never started


def test_a_missing_test_database_is_created():
    name = f"missmod_prereq_{uuid.uuid4().hex[:8]}"
    url = f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        planned = prerequisites("--dry-run", env={"MISSMOD_TEST_POSTGRES_URL": url})
        assert planned.stdout.strip() == "make test would: create the tests' database"
        completed = prerequisites(env={"MISSMOD_TEST_POSTGRES_URL": url})
        assert completed.returncode == 0, completed.stderr
        with admin.connect() as connection:
            assert connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar() == 1
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def test_with_everything_there_it_says_so_and_changes_nothing():
    completed = prerequisites("--dry-run")
    assert completed.returncode == 0 and completed.stdout.strip() == "make test: everything the tests need is here"
