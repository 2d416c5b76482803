"""Warm shutdown that loses no run: SIGTERM to a worker (`docker compose stop`, Ctrl-C, a
redeploy) makes the run in progress stop at the end of its current epoch, right after its
checkpoint, and go back to the queue to resume elsewhere — instead of running to its end
(hours past any stop timeout) or being killed and waiting for the reconcile step.

Celery handles SIGTERM in the worker's main process (warm shutdown: stop taking ids, wait for
the running task); the run trains in a pool child, which by default dies on SIGTERM. So:
- the main process passes the signal on to its pool children (`worker_shutting_down`);
- a child takes the first SIGTERM as "stop after this epoch" (a flag the training loop reads),
  and a second one as "stop now" (the default action), so a cold shutdown still ends it.
"""

from __future__ import annotations

import logging
import os
import signal

from celery import signals

log = logging.getLogger("missmod.worker")

_requested = False
_work_controller = None


def requested() -> bool:
    """Whether this process was asked to stop (checked by the training loop after each epoch)."""
    return _requested


def _on_sigterm(signum, frame) -> None:
    global _requested
    if _requested:  # asked twice: stop now
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _requested = True


@signals.worker_process_init.connect
def _install_child_handler(**_) -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)


@signals.worker_init.connect
def _remember_worker(sender, **_) -> None:
    global _work_controller
    _work_controller = sender


def _pool_processes() -> list[int]:
    pool = getattr(_work_controller, "pool", None)
    try:
        return list(pool.info.get("processes", [])) if pool is not None else []
    except Exception:  # the pool is not started, or already gone
        return []


@signals.worker_shutting_down.connect
def _pass_warm_shutdown_to_the_run(how: str = "", **_) -> None:
    if how != "Warm":
        return  # a cold shutdown ends the children itself
    for pid in _pool_processes():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
