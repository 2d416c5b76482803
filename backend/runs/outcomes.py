"""What follows a run's end, wherever it ended (the worker, the reconcile step, a cancel): a
sweep whose last run this was is marked finished — once, by a conditional update, however many
processes end its runs at the same moment — and the webhook hears of failed runs and finished
sweeps (backend/notify.py). Call it after the run's end is committed."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .. import notify
from ..db import utcnow
from ..settings import Settings
from ..sweeps.models import Sweep
from ..sweeps.service import progress_of
from .models import TERMINAL_STATES, Run, RunState


def mark_sweep_finished(session: Session, sweep_id: int) -> bool:
    """Set the sweep's finished_at if every run of it has finished and it was not set; True
    only for the caller whose update did it."""
    unfinished = select(Run.id).where(Run.sweep_id == sweep_id, Run.state.not_in(list(TERMINAL_STATES))).exists()
    has_runs = select(Run.id).where(Run.sweep_id == sweep_id).exists()
    changed = session.execute(update(Sweep).where(Sweep.id == sweep_id, Sweep.finished_at.is_(None), has_runs,
                                                  ~unfinished).values(finished_at=utcnow()))
    session.commit()
    return changed.rowcount == 1


def announce_ended(session: Session, settings: Settings, run_ids: Iterable[int]) -> None:
    sweeps: set[int] = set()
    for run_id in run_ids:
        run = session.get(Run, run_id)
        if run is None or not run.is_terminal:
            continue
        if run.state == RunState.failed:
            notify.run_failed(settings, run.id, run.name, run.error, run.sweep_id)
        if run.sweep_id is not None:
            sweeps.add(run.sweep_id)
    for sweep_id in sorted(sweeps):
        if mark_sweep_finished(session, sweep_id):
            sweep = session.get(Sweep, sweep_id)
            notify.sweep_finished(settings, sweep_id, sweep.name, progress_of(session, [sweep_id])[sweep_id])
