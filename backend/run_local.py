"""`make run`: the whole dashboard on one machine with nothing to install — migrations, the
API (uvicorn) and one Celery worker on the configured broker (by default the filesystem
broker and SQLite under VAR_DIR). Ctrl-C stops both: a run that was training stops after its
current epoch, is queued again and resumes from its checkpoint at the next `make run`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

from .db import session_factory
from .migrate import upgrade
from .queue import WorkQueue
from .reconcile import requeue_interrupted
from .settings import get_settings

# A worker's warm shutdown takes a few seconds of Celery's own, plus the end of the current epoch.
GRACE_SECONDS = 20


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


def main() -> int:
    settings = get_settings()
    print(f"missmod: database {settings.database_url.split('@')[-1]}, broker {settings.broker_url.split('@')[-1]}",
          flush=True)
    upgrade(settings.database_url)
    node = f"local-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    # Own process groups: Ctrl-C reaches this launcher only, which then stops both in order.
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel", "INFO",
         "--hostname", node, "--without-gossip", "--without-mingle"],
        start_new_session=True,
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "backend.main:create_app",
         "--host", settings.host, "--port", str(settings.port)],
        start_new_session=True,
    )
    shown_host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0") else settings.host
    print(f"\n  missmod is serving at http://{shown_host}:{settings.port}/  (Ctrl-C stops it)\n", flush=True)

    stopping = False

    def request_stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while not stopping and worker.poll() is None and server.poll() is None:
        time.sleep(0.2)

    exit_code = 0
    if not stopping:
        crashed = "worker" if worker.poll() is not None else "server"
        print(f"missmod: the {crashed} exited unexpectedly; stopping", file=sys.stderr, flush=True)
        exit_code = 1
    print("missmod: stopping the server and the worker…", flush=True)
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
        requeued = requeue_interrupted(session, node, queue)
    queue.close()
    for model, ids in requeued.items():
        if ids:
            print(f"missmod: {model.noun}(s) {', '.join(map(str, ids))} were running and are queued again", flush=True)
    print("missmod: stopped", flush=True)
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
