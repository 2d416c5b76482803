"""Warm shutdown that loses no run: SIGTERM to a worker (`docker compose stop`, Ctrl-C, a
redeploy) makes the run in progress stop at the end of its current epoch, right after its
checkpoint, and go back to the queue to resume elsewhere — instead of running to its end
(hours past any stop timeout) or being killed and waiting for the reconcile step.

Celery handles SIGTERM in the worker's main process (warm shutdown: stop taking ids, wait for
the running task); the run trains in a pool process, where billiard's handler would exit at
once. So:
- the main process passes the signal on to the pool processes running a task
  (`worker_shutting_down`); idle ones are left to the pool's own orderly close;
- while a run trains, its process takes the first SIGTERM as "stop after this epoch" (a flag
  the training loop reads) and a second one as "stop now" (billiard's handler again), so a
  cold shutdown still ends it;
- the run goes back to `queued` in the database, and the main process sends its id once the
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
    """Whether this process was asked to stop (read by the training loop after each epoch)."""
    return _requested


@contextlib.contextmanager
def stop_after_epoch_on_sigterm() -> Iterator[None]:
    """Around a run in a pool process: SIGTERM asks the run to stop after its epoch."""
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
    from backend.queue import RunQueue
    from backend.runs import service
    from backend.settings import get_settings

    settings = get_settings()
    queue = RunQueue(settings)
    try:
        with session_factory(settings.database_url)() as session:
            sent = service.send_awaiting(session, queue, queued_before=utcnow())
        if sent:
            log.info("run(s) %s given back by this worker's shutdown are queued again", sent)
    except Exception as error:  # the reconcile step sends them later
        log.warning("could not send the ids of the runs given back: %s", error)
    finally:
        queue.close()
