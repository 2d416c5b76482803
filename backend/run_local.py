"""`make run`: the whole dashboard on one machine with nothing to install — migrations, the
API (uvicorn) and one Celery worker on the configured broker (by default the filesystem
broker and SQLite under VAR_DIR).

Quiet by default: once the server answers and the worker has registered, its last lines say
where to go, where the data lives and what will train; LOG_LEVEL=info (or --verbose) brings
back Celery's banner and log and the server's access log. Ctrl-C stops both: a run that was
training stops after its current epoch, is queued again and resumes from its checkpoint at
the next `make run`."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from .db import session_factory
from .migrate import upgrade
from .queue import FILESYSTEM_BROKER_URL, WorkQueue
from .reconcile import queued_again, requeue_interrupted, running_on
from .serve import server_environment, uvicorn_command
from .settings import Settings, get_settings
from .workers.models import Worker
from .workers.service import live_workers

# A worker's warm shutdown takes a few seconds of Celery's own, plus the end of the current epoch.
GRACE_SECONDS = 20
# The start of Celery's SecurityWarning for a worker run as root (a PYTHONWARNINGS message filter).
ROOT_WARNING = "ignore:You're running the worker with superuser privileges"


def _stop(process: subprocess.Popen, sig: int, whole_group: bool = False) -> None:
    """Signal the process (or its whole process group: the worker and its pool children)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig) if whole_group else os.kill(process.pid, sig)
        except ProcessLookupError:
            pass


def _wait(processes: list[subprocess.Popen], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in processes):
            return True
        time.sleep(0.1)
    return all(p.poll() is not None for p in processes)


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _shown(path: Path) -> str:
    """A path as the person who typed `make run` would write it: relative to where they are."""
    try:
        return f"./{path.relative_to(Path.cwd())}"
    except ValueError:
        return str(path)


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if sep else url


def ready_lines(settings: Settings, url: str, worker: Worker) -> list[str]:
    """What a newcomer needs once everything is up: where to go, where the data lives, what trains."""
    sqlite = settings.database_url.startswith("sqlite:///")
    database = (f"{_shown(Path(settings.database_url.removeprefix('sqlite:///')))} (SQLite)" if sqlite
                else _without_password(settings.database_url))
    files = _shown(Path(settings.artifact_url)) if settings.artifacts_are_local else settings.artifact_url
    slots = f"{worker.slots} slot{'s' if worker.slots != 1 else ''}"
    return [
        f"missmod is ready at {url}",
        f"  database:  {database}",
        f"  run files: {files}",
        f"  datasets:  {_shown(settings.data_dir)} (your own .npz files go in {_shown(settings.data_dir / 'features')})",
        f"  workers:   {slots} ready on {worker.gpu_name or 'cpu'} (RUNS_PER_GPU sets how many)",
        "  Ctrl-C stops it; a run that was training resumes at the next `make run`.",
    ]


def _registered(settings: Settings, node: str) -> Worker | None:
    with session_factory(settings.database_url)() as session:
        return next((w for w in live_workers(session, settings.heartbeat_timeout) if w.name == node), None)


def _answers(url: str) -> bool:
    """Whether the server answers HTTP at all (a 400 for an untrusted Host is an answer too)."""
    try:
        httpx.get(f"{url}api/health", timeout=1.0)
        return True
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.run_local", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", action="store_true",
                        help="Celery's banner and log, and every request the server answers (as LOG_LEVEL=info)")
    args = parser.parse_args(argv)
    settings = get_settings()
    level = "info" if args.verbose and settings.log_level in ("warning", "error") else settings.log_level
    chatty = level in ("debug", "info")
    print("missmod: starting the server and a worker…", flush=True)
    upgrade(settings.database_url)
    node = f"local-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    worker_env = dict(os.environ)
    if running_as_root():
        # Celery warns at length about root; said once, plainly, here instead.
        worker_env["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), ROOT_WARNING]))
        print("missmod: running as root. Fine on a machine of your own; on a shared host, run it as a normal "
              "user.", flush=True)
    # Own process groups: Ctrl-C reaches this launcher only, which then stops both in order.
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", *([] if chatty else ["--quiet"]),
         # Celery's command line takes BROKER_URL from the environment over the app's; the folder
         # broker's URL as the app writes it (backend/queue.py) spares kombu's "no hostname" warning.
         *(["--broker", FILESYSTEM_BROKER_URL] if settings.uses_filesystem_broker else []),
         "worker", "--loglevel", level.upper(), "--hostname", node, "--without-gossip", "--without-mingle"],
        start_new_session=True, env=worker_env,
    )
    server = subprocess.Popen(
        uvicorn_command(settings, "--log-level", level, *([] if chatty else ["--no-access-log"])),
        start_new_session=True, env=server_environment(),
    )
    shown_host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0") else settings.host
    url = f"http://{shown_host}:{settings.port}/"
    probe_host = "127.0.0.1" if settings.host == "0.0.0.0" else settings.host
    probe_url = f"http://{'[' + probe_host + ']' if ':' in probe_host else probe_host}:{settings.port}/"

    stopping = False

    def request_stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    announced = False
    while not stopping and worker.poll() is None and server.poll() is None:
        if not announced and _answers(probe_url) and (registered := _registered(settings, node)):
            print("\n" + "\n".join(ready_lines(settings, url, registered)) + "\n", flush=True)
            announced = True
        time.sleep(0.2)

    exit_code = 0
    if not stopping:
        crashed = "worker" if worker.poll() is not None else "server"
        print(f"missmod: the {crashed} exited unexpectedly; stopping", file=sys.stderr, flush=True)
        exit_code = 1
    print("missmod: stopping the server and the worker…", flush=True)
    with session_factory(settings.database_url)() as session:
        held = running_on(session, node)  # its worker gives these back as it stops (quietly: its log is off)
    _stop(server, signal.SIGTERM)
    _stop(worker, signal.SIGTERM)  # warm shutdown: the run stops after its epoch and is queued again
    if not _wait([server, worker], GRACE_SECONDS):
        print("missmod: a run's epoch is taking long; stopping it now (it resumes from its last checkpoint)",
              flush=True)
        _stop(worker, signal.SIGQUIT)  # cold shutdown
        if not _wait([server, worker], 5):
            for process in (server, worker):
                _stop(process, signal.SIGKILL, whole_group=True)
            _wait([server, worker], 5)

    queue = WorkQueue(settings)
    with session_factory(settings.database_url)() as session:
        requeued = requeue_interrupted(session, node, queue)  # what a killed worker could not give back
        given_back = queued_again(session, held)
    queue.close()
    for model in held:
        ids = sorted(set(given_back[model]) | set(requeued[model]))
        if ids:
            print(f"missmod: {model.noun}(s) {', '.join(map(str, ids))} were running and are queued again", flush=True)
    print("missmod: stopped", flush=True)
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
