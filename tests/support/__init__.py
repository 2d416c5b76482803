"""Helpers the tests share that are not fixtures: where the repository and the services are,
waiting on conditions (never on fixed sleeps), child processes with their logs, and what the
embedded broker holds. Fixtures live in tests/conftest.py."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from backend.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("MISSMOD_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
POSTGRES_ADMIN_URL = os.environ.get("MISSMOD_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Debian's chromium (what `make test` installs: tests/prerequisites.py), or one named here.
CHROMIUM = os.environ.get("MISSMOD_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a child process build the same Settings (every field)."""
    from pydantic import SecretStr

    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, list):  # comma-separated, as the settings read them (TRUSTED_HOSTS, TRUSTED_PROXIES)
            env[name.upper()] = ",".join(map(str, value))
        else:
            env[name.upper()] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env



def quick_to_reconcile(settings: Settings, **changes) -> Settings:
    """Heartbeats every 0.5 s, a worker taken for dead after 4 s without one, the API's
    reconcile step every 0.5 s, and a checkpoint after every epoch (the tests kill a worker after
    a given epoch and look for the run to resume from it): the same code as in production, on a
    test's time scale."""
    return settings.model_copy(update={"heartbeat_interval": 0.5, "heartbeat_timeout": 4.0,
                                       "reconcile_interval": 0.5, "checkpoint_interval": 0.0, **changes})


def queued_task_ids(settings: Settings) -> list[str]:
    """The task ids waiting in the embedded (filesystem) broker's queue, in the order they were
    sent: a run's id, or `job-<id>` for a dataset job."""
    import json

    messages = sorted((settings.broker_dir / "queue").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return [json.loads(p.read_text())["headers"]["id"] for p in messages]


def queued_run_ids(settings: Settings) -> list[int]:
    """The run ids waiting in the embedded broker's queue, in the order they were sent."""
    return [int(task_id) for task_id in queued_task_ids(settings)]



def read_events(response) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a Server-Sent Events response, read to its end."""
    import json

    events, name, data = [], None, []
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data.append(line.split(":", 1)[1].strip())
        elif line == "" and name:
            events.append((name, json.loads("\n".join(data))))
            name, data = None, []
    return events



def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")



def wait_in_page(page, expression: str, timeout: float = 30) -> None:
    """Poll a JavaScript expression with page.evaluate until it is truthy. Not
    page.wait_for_function: it evaluates its predicate repeatedly inside the page, which the
    pages' Content-Security-Policy (no 'unsafe-eval') refuses. A navigation that starts while
    a poll runs destroys the page's context under it: that poll counts as "not yet" (tests that
    cause a navigation should still wait for it, with page.expect_navigation or wait_for_url)."""
    from playwright.sync_api import Error as PlaywrightError

    def holds() -> bool:
        try:
            return bool(page.evaluate(expression))
        except PlaywrightError as error:
            if "Execution context was destroyed" in str(error):
                return False
            raise

    wait_for(holds, timeout, interval=0.1, what=expression)



def sample_std(values) -> float:
    """The sample standard deviation, sqrt(Σ(x − x̄)² / (n − 1)), written out: the expected value of
    the tables' "± std", computed otherwise than the code does (statistics.stdev)."""
    import math

    mean = sum(values) / len(values)
    return math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1))



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



class Process:
    """A child process with its output in a log file, stopped at teardown."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cwd: Path = ROOT):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float) -> None:
        def seen():
            if self.popen.poll() is not None:
                raise AssertionError(f"process exited with {self.popen.returncode}:\n{self.log()[-3000:]}")
            return needle in self.log()

        wait_for(seen, timeout, what=f"{needle!r} in {self.log_path.name}")

    def stop(self) -> None:
        import signal

        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()

    def kill(self) -> None:
        """At a test's end, the process and its children at once (SIGKILL to its group): nothing
        it could still do matters then, and a warm stop costs seconds (an idle Celery worker takes
        3-15 s to shut down). Tests that check a stop use stop()."""
        import signal

        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        self._log.close()



# The test runs train tiny MLPs, fastest on one thread. With torch's default (a thread per
# core) on a small machine shared with other test runs, its threads spin against each other
# and a run that takes 0.3 s alone takes 5-15 s.
WORKER_TEST_ENV = {"OMP_NUM_THREADS": "1"}


class ServerURL(str):
    """The base URL of a started API, and its process (for the tests that stop it)."""

    def __new__(cls, url: str, process: "Process"):
        instance = super().__new__(cls, url)
        instance.process = process
        return instance


