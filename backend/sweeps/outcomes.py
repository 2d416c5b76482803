"""What a sweep does when its runs end or are queued again, registered with the runs' outcomes
(backend/runs/outcomes.py) by `listen`, which every process that ends runs calls at start (the API's
create_app, the worker's executor): a sweep whose last run this was is marked finished — once, by
a conditional update, however many processes end its runs at the same moment — and the webhook
hears of it; a sweep with a run queued again is not finished any more."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .. import notify
from ..db import utcnow
from ..runs import outcomes as run_outcomes
from ..runs.models import TERMINAL_STATES, Run
from ..settings import Settings
from .models import Sweep
from .service import progress_of


def mark_sweep_finished(session: Session, sweep_id: int) -> bool:
    """Set the sweep's finished_at if every run of it has finished and it was not set; True
    only for the caller whose update did it."""
    unfinished = select(Run.id).where(Run.sweep_id == sweep_id, Run.state.not_in(list(TERMINAL_STATES))).exists()
    has_runs = select(Run.id).where(Run.sweep_id == sweep_id).exists()
    changed = session.execute(update(Sweep).where(Sweep.id == sweep_id, Sweep.finished_at.is_(None), has_runs,
                                                  ~unfinished).values(finished_at=utcnow()))
    session.commit()
    return changed.rowcount == 1


def runs_ended(session: Session, settings: Settings, runs: Sequence[Run]) -> None:
    for sweep_id in sorted({run.sweep_id for run in runs if run.sweep_id is not None}):
        if mark_sweep_finished(session, sweep_id):
            sweep = session.get(Sweep, sweep_id)
            notify.sweep_finished(settings, sweep_id, sweep.name, progress_of(session, [sweep_id])[sweep_id])


def runs_queued_again(session: Session, runs: Sequence[Run]) -> None:
    sweep_ids = {run.sweep_id for run in runs if run.sweep_id is not None}
    if sweep_ids:  # each has a run to finish again
        session.execute(update(Sweep).where(Sweep.id.in_(sorted(sweep_ids))).values(finished_at=None))


def listen() -> None:
    run_outcomes.listen(ended=runs_ended, queued_again=runs_queued_again)
