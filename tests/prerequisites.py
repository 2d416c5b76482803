"""What the test suite needs outside Python, provided before it starts (`make test` runs this
first): Chromium for the browser tests, docker-compose for the deployment tests, Redis and
PostgreSQL for the integration tests.

How, and why so:

- Chromium and docker-compose are Debian packages (`chromium`, `docker-compose`), installed
  with apt-get when the run is root on a Debian-like machine — the machine CI and the
  project's developers use. `--no-install-recommends` keeps docker-compose from pulling in a
  Docker engine: the tests only ask it to validate and resolve docker-compose.yml, which is the
  one thing a JSON schema of the compose format could not do (variable interpolation, required
  secrets, profiles, resolved short syntax). Playwright's own browser download is not used:
  it needs a host outside the package registries.
- Redis and PostgreSQL, when installed but down, are started as CI has always started them.
  The database `test` is created when PostgreSQL answers without it.
- Anything that cannot be provided (not root, no apt-get, a service not installed) stops the
  run at once with one line saying what to install — never after half an hour of errors.

When everything is there this costs a few file checks and two pings, so re-runs stay cheap.
`--dry-run` says what would be done and changes nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tests.support import POSTGRES_ADMIN_URL, REDIS_URL

SERVICE_START_TIMEOUT = 30  # seconds for a started Redis or PostgreSQL to answer


@dataclass
class Plan:
    packages: list[str] = field(default_factory=list)  # Debian packages to install
    commands: list[list[str]] = field(default_factory=list)  # services to start
    create_database: bool = False  # PostgreSQL answers, the tests' database is missing
    missing: list[str] = field(default_factory=list)  # what cannot be provided here, with how to provide it


def is_root() -> bool:
    return os.geteuid() == 0


def redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def postgres_state(url: str) -> str:
    """"up", "no database" (the server answers, the database is missing) or "down"."""
    import psycopg

    try:
        psycopg.connect(_libpq(url), connect_timeout=3).close()
        return "up"
    except psycopg.OperationalError as error:
        return "no database" if "does not exist" in str(error) else "down"


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _local(url: str) -> bool:
    return urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")


def plan(redis_url: str = REDIS_URL, postgres_url: str = POSTGRES_ADMIN_URL) -> Plan:
    """What must be done before the tests can run, and what cannot be done here."""
    result = Plan()
    can_apt = is_root() and shutil.which("apt-get") is not None
    if os.environ.get("MISSMOD_TEST_CHROMIUM"):  # a browser of one's own: nothing to install
        if not Path(os.environ["MISSMOD_TEST_CHROMIUM"]).exists():
            result.missing.append(f"Chromium at MISSMOD_TEST_CHROMIUM={os.environ['MISSMOD_TEST_CHROMIUM']}")
    elif shutil.which("chromium") is None:
        if can_apt:
            result.packages.append("chromium")
        else:
            result.missing.append("Chromium (Debian: apt-get install --no-install-recommends chromium; or set "
                                  "MISSMOD_TEST_CHROMIUM to a Chromium's path)")
    if shutil.which("docker-compose") is None:
        if can_apt:
            result.packages.append("docker-compose")
        else:
            result.missing.append("docker-compose (Debian: apt-get install --no-install-recommends docker-compose)")

    if not redis_answers(redis_url):
        port = str(urlsplit(redis_url).port or 6379)
        if _local(redis_url) and is_root() and shutil.which("redis-server"):
            result.commands.append(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", port,
                                    "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
                                    "--logfile", f"/var/log/redis/missmod-test-{port}.log"])
        else:
            result.missing.append(f"Redis answering at {redis_url} (Debian: apt-get install redis-server; "
                                  "or set MISSMOD_TEST_REDIS_URL)")

    state = postgres_state(postgres_url)
    if state == "down":
        clusters = sorted(p.name for p in Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").is_dir() else []
        if _local(postgres_url) and is_root() and shutil.which("pg_ctlcluster") and clusters:
            result.commands.append(["pg_ctlcluster", "--skip-systemctl-redirect", clusters[-1], "main", "start"])
        else:
            result.missing.append(f"PostgreSQL answering at {postgres_url} with trust auth (Debian: apt-get install "
                                  "postgresql; or set MISSMOD_TEST_POSTGRES_URL)")
    result.create_database = state == "no database"
    return result


def create_database(postgres_url: str) -> None:
    """The database of the URL, on its server (through the server's `postgres` database)."""
    import psycopg

    server, _, name = _libpq(postgres_url).rpartition("/")
    with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')


def provide(todo: Plan, redis_url: str = REDIS_URL, postgres_url: str = POSTGRES_ADMIN_URL) -> None:
    if todo.packages:
        print(f"make test: installing {', '.join(todo.packages)} (apt-get, --no-install-recommends)", flush=True)
        quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *todo.packages],
                       check=True, env=quiet, stdout=subprocess.DEVNULL)
    for command in todo.commands:
        print(f"make test: starting {command[0]}", flush=True)
        subprocess.run(command, check=True)
    deadline = time.monotonic() + SERVICE_START_TIMEOUT
    while time.monotonic() < deadline:
        if redis_answers(redis_url) and postgres_state(postgres_url) != "down":
            break
        time.sleep(0.5)
    if postgres_state(postgres_url) == "no database":  # known before, or found once it started
        print(f"make test: creating the database {urlsplit(postgres_url).path.lstrip('/')}", flush=True)
        create_database(postgres_url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.prerequisites", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="say what would be done; change nothing")
    args = parser.parse_args(argv)
    todo = plan()
    if todo.missing:
        print(f"make test cannot run here; install: {'; '.join(todo.missing)}", file=sys.stderr, flush=True)
        return 2
    if args.dry_run:
        steps = ([f"apt-get install --no-install-recommends {' '.join(todo.packages)}"] if todo.packages else [])
        steps += [" ".join(command) for command in todo.commands]
        steps += ["create the tests' database"] if todo.create_database else []
        print(f"make test would: {'; '.join(steps)}" if steps else "make test: everything the tests need is here")
        return 0
    provide(todo)
    after = plan()
    if after.packages or after.commands or after.missing or after.create_database:
        print("make test cannot run here: still missing after setting up: "
              f"{', '.join(after.packages + [c[0] for c in after.commands] + after.missing)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
