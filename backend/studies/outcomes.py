"""What a study does when runs end or are queued again, registered with the runs' outcomes
(backend/runs/outcomes.py) by `listen`, which every process that ends runs calls at start (the
API's create_app, the worker's executor): a trial's run that ended gives the trial its outcome and
the study its next trials (or its final runs); a final run that ended may finish the study; a trial's
run queued again (a retry) is the same trial, training again."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from ..runs import outcomes as run_outcomes
from ..runs.models import Run
from ..settings import Settings
from . import service


def runs_ended(session: Session, settings: Settings, runs: Sequence[Run]) -> None:
    service.on_runs_ended(session, settings, runs)


def runs_queued_again(session: Session, runs: Sequence[Run]) -> None:
    service.trials_queued_again(session, [run.id for run in runs])


def listen() -> None:
    run_outcomes.listen(ended=runs_ended, queued_again=runs_queued_again)
