"""What follows a run's end, wherever it ended (the worker, the reconcile step, a cancel): the
webhook hears of a failed run (backend/notify.py), and whoever registered to hear of ended runs
is told — a sweep, for one, may now be finished (backend/sweeps/outcomes.py registers for it, so
runs know nothing of sweeps). Call `announce_ended` after the run's end is committed; `queued_again`
inside the transaction that queues a finished run again (a retry)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from sqlalchemy.orm import Session

from .. import notify
from ..settings import Settings
from .models import Run, RunState

# Called with the runs that ended (terminal, committed), in id order.
EndedListener = Callable[[Session, Settings, Sequence[Run]], None]
# Called with the finished runs being queued again, before the caller commits.
QueuedAgainListener = Callable[[Session, Sequence[Run]], None]

_ended: list[EndedListener] = []
_queued_again: list[QueuedAgainListener] = []


def listen(*, ended: EndedListener | None = None, queued_again: QueuedAgainListener | None = None) -> None:
    """Register what to call when runs end or are queued again; registering the same function
    twice registers it once."""
    for listeners, listener in ((_ended, ended), (_queued_again, queued_again)):
        if listener is not None and listener not in listeners:
            listeners.append(listener)


def announce_ended(session: Session, settings: Settings, run_ids: Iterable[int]) -> None:
    ended = []
    for run_id in dict.fromkeys(run_ids):
        run = session.get(Run, run_id)
        if run is None or not run.is_terminal:
            continue
        if run.state == RunState.failed:
            notify.run_failed(settings, run.id, run.name, run.error, run.sweep_id)
        ended.append(run)
    if ended:
        for listener in _ended:
            listener(session, settings, ended)


def queued_again(session: Session, runs: Sequence[Run]) -> None:
    for listener in _queued_again:
        listener(session, runs)
