"""Warm shutdown that loses no run and no dataset job: SIGTERM to a worker (`docker compose
stop`, Ctrl-C, a redeploy) makes the run in progress stop at the end of its current epoch,
right after its checkpoint (a dataset job: after its current clip or batch), and go back to the
queue to resume elsewhere — instead of running to its end (hours past any stop timeout) or
being killed and waiting for the reconcile step.

Celery handles SIGTERM in the worker's main process (warm shutdown: stop taking ids, wait for
the running task); the run trains in a pool process, where billiard's handler would exit at
once. So:
- the main process passes the signal on to the pool processes running a task
  (`worker_shutting_down`); idle ones are left to the pool's own orderly close;
- while a run trains (or a job works), its process takes the first SIGTERM as "stop after this
  step" (a flag the training loop, or the job's progress callback, reads) and a second one as "stop now" (billiard's handler again), so a
  cold shutdown still ends it;
- the run goes back to `queued` in the database (worker/lease_holder.py), and the main process sends its id once the
  shutdown has stopped consuming (`worker_shutdown`): sent earlier, the id would be taken by
  this very worker, which keeps consuming for a moment after the signal. If the worker is
  killed before that, the reconcile step sends it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator

from celery import signals

log = logging.getLogger("missmod.worker")

_requested = False


def requested() -> bool:
    """Whether this process was asked to stop (read by the work after each step)."""
    return _requested


@contextlib.contextmanager
def stop_after_this_step_on_sigterm() -> Iterator[None]:
    """Around a run or a job in a pool process: SIGTERM asks it to stop after its current step."""
    global _requested
    _requested = False
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame) -> None:
        global _requested
        if _requested:  # asked twice: stop now, as the pool process would have
            signal.signal(signal.SIGTERM, previous if callable(previous) else signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        _requested = True

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@signals.worker_shutting_down.connect
def _pass_warm_shutdown_to_the_runs(how: str = "", **_) -> None:
    if how != "Warm":
        return  # a cold shutdown ends the pool processes itself
    from celery.worker import state

    for request in list(state.active_requests):
        if request.worker_pid:
            try:
                os.kill(request.worker_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


@signals.worker_shutdown.connect
def _send_the_runs_given_back(**_) -> None:
    # Imported here: the main process must not import the training code (nor torch) up front.
    from backend.db import session_factory, utcnow
    from backend.queue import WorkQueue
    from backend.reconcile import send_awaiting
    from backend.settings import get_settings

    settings = get_settings()
    queue = WorkQueue(settings)
    try:
        with session_factory(settings.database_url)() as session:
            sent = send_awaiting(session, queue, queued_before=utcnow())
        for model, ids in sent.items():
            if ids:
                log.info("%s(s) %s given back by this worker's shutdown are queued again", model.noun, ids)
    except Exception as error:  # the reconcile step sends them later
        log.warning("could not send the ids of the runs and jobs given back: %s", error)
    finally:
        queue.close()
