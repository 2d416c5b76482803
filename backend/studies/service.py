"""Studies as plain functions over a session (docs/studies.md): create, read, cancel, delete, and
`advance`, which moves a study on — asking the sampler for the next trials, starting the final
runs once every arm spent its budget, noticing the end — and which every process that ends a run
calls (backend/studies/outcomes.py), as does the reconcile step (backend/reconcile.py).

What makes a worker killed mid-study lose no trial and count none twice:
- a trial is a run, and a run survives its worker (the lease, the reconcile step, the checkpoint);
  its trial row points to it, so a resumed run is the same trial, never a new one;
- trial numbers of an arm are unique (study, arm, number), and an arm never gets a number past its
  budget: no trial is asked twice, and no arm gets more trials than another;
- every change of a study's trials is one transaction that also bumps the study's version on the
  version it read: two processes advancing the same study at the same moment cannot both ask;
- a trial row and its run are committed together, then the run's id is sent (the outbox of
  backend/lifecycle/api.py: a lost send is made by the reconcile step);
- if the process that ended a trial's run dies before advancing the study, the reconcile step's
  next pass advances it.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from training.selection import DEFAULT_SELECTION_RULE

from .. import pagination
from ..db import utcnow
from ..queue import WorkQueue
from ..runs import service as runs
from ..runs.models import TERMINAL_STATES, Run, RunState
from ..runs.schemas import RunCreate
from ..settings import Settings
from ..sweeps.models import Sweep
from .models import Study, StudyState, StudyTrial, TrialState
from .plan import StudyPlan, setting_label

log = logging.getLogger("missmod.studies")

ACTIVE_STATES = (StudyState.searching, StudyState.final)
ADVANCE_ATTEMPTS = 20


class StudyNotFound(LookupError):
    pass


class StudyFinished(RuntimeError):
    """The study already ended (finished or cancelled)."""


# --- arms and specs ----------------------------------------------------------------------


def arm_parts(study: Study, arm: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(candidate, setting) of arm `arm`."""
    return study.candidates[arm // len(study.settings)], study.settings[arm % len(study.settings)]


def arm_label(study: Study, arm: int) -> str:
    candidate, setting = arm_parts(study, arm)
    return f"{candidate['label']} · {setting_label(setting)}"


def arm_spec(study: Study, arm: int, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """The run spec of a trial (seed: the study's trial seed) or of a final run (its own seed)."""
    candidate, setting = arm_parts(study, arm)
    return {"dataset": study.dataset, **study.base_spec, "method": candidate["method"], "fusion": candidate["fusion"],
            **candidate["options"], **setting, **params, "seed": seed}


def selection_rule(study: Study) -> str:
    return study.base_spec.get("selection_rule", DEFAULT_SELECTION_RULE)


def epochs_of(study: Study) -> int:
    return int(study.base_spec.get("epochs", RunCreate.model_fields["epochs"].default))


def optuna_arm(study: Study, arm: int):
    from .optimiser import Arm  # optuna: loaded on the first decision, not when the API starts

    candidate, _ = arm_parts(study, arm)
    return Arm(name=f"missmod-study-{study.id}-arm-{arm}", space=candidate["space"], sampler=study.sampler,
               pruner=study.pruner, epochs=epochs_of(study), index=arm)


def record_of(trial: StudyTrial):
    from .optimiser import TrialRecord

    return TrialRecord(number=trial.number, params=trial.params, state=trial.state, value=trial.value,
                       intermediate={int(epoch): value for epoch, value in (trial.intermediate or {}).items()},
                       system_attrs=trial.system_attrs or {})


# --- reading -----------------------------------------------------------------------------


def get_study(session: Session, study_id: int) -> Study:
    study = session.get(Study, study_id)
    if study is None:
        raise StudyNotFound(study_id)
    return study


def study_by_idempotency_key(session: Session, key: str) -> Study | None:
    return session.scalar(select(Study).where(Study.idempotency_key == key))


def list_studies(session: Session, limit: int = 50, cursor: str | None = None) -> tuple[list[Study], int, str | None]:
    """A page of studies, newest first, the total, and the next page's cursor (None at the end;
    backend/pagination.py)."""
    total = session.scalar(select(func.count(Study.id))) or 0
    query = select(Study).order_by(Study.id.desc()).limit(limit + 1)
    if cursor:
        _, study_id = pagination.decode(cursor, pagination.NEWEST_FIRST)
        query = query.where(Study.id < study_id)
    studies = list(session.scalars(query))
    next_cursor = None
    if len(studies) > limit:
        last = studies[limit - 1]
        next_cursor = pagination.encode(pagination.NEWEST_FIRST, last.id, last.id)
    return studies[:limit], int(total), next_cursor


def trials_of(session: Session, study_id: int, arm: int | None = None) -> list[StudyTrial]:
    query = select(StudyTrial).where(StudyTrial.study_id == study_id)
    if arm is not None:
        query = query.where(StudyTrial.arm == arm)
    return list(session.scalars(query.order_by(StudyTrial.arm, StudyTrial.number)))


def trial_runs(session: Session, study: Study) -> tuple[list[int], list[int]]:
    """The ids of the study's trial runs, and of those waiting for the broker."""
    trial_runs = list(session.scalars(select(Run).join(StudyTrial, StudyTrial.run_id == Run.id)
                                      .where(StudyTrial.study_id == study.id).order_by(Run.id)))
    return [r.id for r in trial_runs], [r.id for r in trial_runs if r.awaiting_broker]


def trial_of_run(session: Session, run_id: int) -> StudyTrial | None:
    return session.scalar(select(StudyTrial).where(StudyTrial.run_id == run_id))


def best_trial(trials: Iterable[StudyTrial]) -> StudyTrial | None:
    """The completed trial with the best validation accuracy; the earliest among ties."""
    complete = [t for t in trials if t.state == TrialState.complete and t.value is not None]
    return max(sorted(complete, key=lambda t: t.number), key=lambda t: t.value, default=None)


# --- creating -----------------------------------------------------------------------------


def create_study(session: Session, queue: WorkQueue, plan: StudyPlan, *, preset: str | None = None,
                 preset_options: dict[str, Any] | None = None, idempotency_key: str | None = None) -> Study:
    """Commit the study, then ask for its first trials (committed with their runs, then sent). A
    key already taken raises IntegrityError (api/idempotency.py)."""
    study = Study(**plan.fields(), state=StudyState.searching, created_at=utcnow(), preset=preset,
                  preset_options=preset_options, idempotency_key=idempotency_key, version=0)
    session.add(study)
    session.commit()
    advance(session, queue, study.id)
    session.refresh(study)
    return study


# --- moving a study on ----------------------------------------------------------------------


def sync_trials(session: Session, study_id: int) -> int:
    """Trials whose run ended take its outcome: succeeded → complete (value: the validation
    accuracy it selected), failed or cancelled by someone → failed; a pruned trial stays pruned;
    a trial whose run was deleted failed. Each change is conditional on the trial still running.
    Returns how many changed."""
    rows = session.execute(
        select(StudyTrial.id, Run.state, Run.val_accuracy)
        .outerjoin(Run, Run.id == StudyTrial.run_id)
        .where(StudyTrial.study_id == study_id, StudyTrial.state == TrialState.running)).all()
    changed = 0
    for trial_id, run_state, val_accuracy in rows:
        if run_state is None:
            state, value = TrialState.failed, None
        elif run_state == RunState.succeeded:
            ok = val_accuracy is not None and math.isfinite(val_accuracy)
            state, value = (TrialState.complete, val_accuracy) if ok else (TrialState.failed, None)
        elif run_state in (RunState.failed, RunState.cancelled):
            state, value = TrialState.failed, None
        else:
            continue
        changed += session.execute(
            update(StudyTrial).where(StudyTrial.id == trial_id, StudyTrial.state == TrialState.running)
            .values(state=state, value=value, finished_at=utcnow())).rowcount
    if changed:
        session.commit()
    return changed


def _next_arm(study: Study, asked: Counter) -> int | None:
    """The arm with the fewest trials asked (the first among equals), below its budget: every
    arm moves on at the same pace and ends with exactly trials_per_arm trials."""
    open_arms = [arm for arm in range(study.arms) if asked[arm] < study.trials_per_arm]
    return min(open_arms, key=lambda arm: (asked[arm], arm)) if open_arms else None


def _ask(session: Session, study: Study, trials: list[StudyTrial]) -> list[Run]:
    """Add the trials to ask now (and their runs), without committing: as many as free places
    under parallel_trials, each from the arm the furthest behind."""
    from .optimiser import ask

    asked = Counter(t.arm for t in trials)
    running = sum(t.state == TrialState.running for t in trials)
    by_arm: dict[int, list[StudyTrial]] = {}
    for trial in trials:
        by_arm.setdefault(trial.arm, []).append(trial)
    created: list[Run] = []
    while running < study.parallel_trials:
        arm = _next_arm(study, asked)
        if arm is None:
            break
        started = time.perf_counter()
        records = [record_of(t) for t in by_arm.get(arm, [])]
        params = ask(optuna_arm(study, arm), records)
        trial = StudyTrial(study_id=study.id, arm=arm, number=asked[arm], params=params, state=TrialState.running,
                           intermediate={}, system_attrs={}, created_at=utcnow())
        spec = arm_spec(study, arm, params, study.trial_seed)
        try:
            payload = RunCreate.model_validate(
                {**spec, "name": f"{study.name[:100]} · {arm_label(study, arm)} · trial {trial.number}"[:200]})
        except ValueError as error:  # parameters that no run can take together: the trial fails, counted
            log.warning("study %s, arm %s: trial %s cannot run: %s", study.id, arm, trial.number, error)
            trial.state, trial.finished_at = TrialState.failed, utcnow()
        else:
            run = runs.new_run(payload)
            session.add(run)
            session.flush()
            trial.run_id = run.id
            created.append(run)
            running += 1
        trial.overhead_seconds = time.perf_counter() - started
        session.add(trial)
        by_arm.setdefault(arm, []).append(trial)
        asked[arm] += 1
    return created


def _start_final(session: Session, study: Study, trials: list[StudyTrial]) -> tuple[list[Run], dict[str, Any]]:
    """The final runs — each arm's best configuration over seeds 0 … final_seeds − 1, seed by
    seed — as a sweep; and the study's new column values."""
    best = {arm: best_trial(t for t in trials if t.arm == arm) for arm in range(study.arms)}
    chosen = {arm: trial for arm, trial in best.items() if trial is not None}
    if not chosen:  # no arm completed a trial: nothing to run
        return [], {"state": StudyState.finished, "finished_at": utcnow()}
    sweep = Sweep(name=f"{study.name[:170]}: final runs", created_at=utcnow(), preset=None,
                  grid={"study": [study.id], "seed": list(range(study.final_seeds))},
                  preset_options={"study_id": study.id})
    session.add(sweep)
    session.flush()
    created, final_runs = [], {}
    for seed in range(study.final_seeds):
        for arm, trial in chosen.items():
            payload = RunCreate.model_validate({
                **arm_spec(study, arm, trial.params, seed),
                "name": f"{study.name[:100]} · {arm_label(study, arm)} · best (trial {trial.number}) · seed {seed}"[:200]})
            run = runs.new_run(payload, sweep_id=sweep.id)
            session.add(run)
            session.flush()
            created.append(run)
            final_runs[str(run.id)] = arm
    return created, {"state": StudyState.final, "final_sweep_id": sweep.id, "final_runs": final_runs}


def _final_runs_ended(session: Session, study: Study) -> bool:
    if study.final_sweep_id is None:
        return True  # the final sweep was deleted
    unfinished = session.scalar(select(func.count(Run.id)).where(
        Run.sweep_id == study.final_sweep_id, Run.state.not_in(list(TERMINAL_STATES))))
    return not unfinished


def advance(session: Session, queue: WorkQueue, study_id: int) -> list[int]:
    """Move the study on as far as it can go now; returns the ids of the runs it created.
    Safe to call from any number of processes at once, as often as wanted."""
    created_ids: list[int] = []
    for _ in range(ADVANCE_ATTEMPTS):
        session.expire_all()
        study = session.get(Study, study_id)
        if study is None or study.state not in ACTIVE_STATES:
            return created_ids
        sync_trials(session, study_id)
        version = study.version
        trials = trials_of(session, study_id)
        created: list[Run] = []
        changes: dict[str, Any] = {}
        try:
            if study.state == StudyState.searching:
                created = _ask(session, study, trials)
                everything_asked = all(sum(t.arm == arm for t in trials) >= study.trials_per_arm
                                       for arm in range(study.arms))
                if not session.new and everything_asked and not any(t.state == TrialState.running for t in trials):
                    created, changes = _start_final(session, study, trials)
            elif _final_runs_ended(session, study):
                changes = {"state": StudyState.finished, "finished_at": utcnow()}
            if not created and not changes and not session.new:
                session.rollback()
                return created_ids  # nothing more to do now
            session.flush()
            bumped = session.execute(update(Study).where(Study.id == study_id, Study.version == version)
                                     .values(version=version + 1, **changes))
        except IntegrityError:  # another process committed the same trial number first
            session.rollback()
            continue
        if bumped.rowcount != 1:  # another process advanced it meanwhile: read again
            session.rollback()
            continue
        session.commit()
        if created:
            runs.enqueue_committed(session, created, queue)
            created_ids += [r.id for r in created]
            log.info("study %s: queued runs %s", study_id, [r.id for r in created])
        # Look again: a trial that could not run, or final runs, may have left more to do.
    log.warning("study %s: stopped advancing after %d rounds (others kept advancing it)", study_id, ADVANCE_ATTEMPTS)
    return created_ids


def advance_active(session: Session, queue: WorkQueue) -> None:
    """Advance every study not ended (the reconcile step: a process that ended a trial's run may
    have died before advancing its study)."""
    for study_id in list(session.scalars(select(Study.id).where(Study.state.in_(list(ACTIVE_STATES))))):
        try:
            advance(session, queue, study_id)
        except Exception as error:  # one study's trouble must not stop the others'
            session.rollback()
            log.warning("study %s could not advance: %s: %s", study_id, type(error).__name__, error)


# --- what a worker reports ------------------------------------------------------------------


def report_epoch(session: Session, run_id: int, epoch: int, val_accuracy: float | None) -> bool:
    """A trial's run finished `epoch` with this validation accuracy: record it and ask the
    arm's pruner whether to stop the trial. True: pruned — the trial is marked so and its run's
    cancel flag set in the same transaction (a resumed run stops at once too). Not a trial: False."""
    trial = session.scalar(select(StudyTrial).where(StudyTrial.run_id == run_id))
    if trial is None:
        return False
    if trial.state == TrialState.pruned:
        return True  # decided before this run's worker died: the resumed run stops too
    study = session.get(Study, trial.study_id)
    if trial.state != TrialState.running or study.state != StudyState.searching or val_accuracy is None:
        return False
    started = time.perf_counter()
    intermediate = {**(trial.intermediate or {}), str(epoch): float(val_accuracy)}
    prune, system_attrs = False, trial.system_attrs or {}
    if study.pruner["name"] != "none" and epoch < epochs_of(study):  # the last epoch is not worth stopping
        from .optimiser import judge

        others = [t for t in trials_of(session, study.id, trial.arm) if t.id != trial.id]
        me = record_of(trial)
        records = [record_of(t) for t in others] + [type(me)(me.number, me.params, me.state, None,
                                                               {int(k): v for k, v in intermediate.items()},
                                                               me.system_attrs)]
        decision = judge(optuna_arm(study, trial.arm), records, trial.number)
        prune, system_attrs = decision.prune, decision.system_attrs
    values: dict[str, Any] = {"intermediate": intermediate, "system_attrs": system_attrs,
                              "overhead_seconds": StudyTrial.overhead_seconds + (time.perf_counter() - started)}
    if prune:
        values.update(state=TrialState.pruned, pruned_epoch=epoch, finished_at=utcnow())
        session.execute(update(Run).where(Run.id == run_id, Run.state == RunState.running)
                        .values(cancel_requested=True))
    changed = session.execute(update(StudyTrial).where(StudyTrial.id == trial.id,
                                                       StudyTrial.state == TrialState.running).values(**values))
    session.commit()
    if prune and changed.rowcount:
        log.info("study %s, %s: trial %s pruned after epoch %s (validation accuracy %.4f)", study.id,
                 arm_label(study, trial.arm), trial.number, epoch, val_accuracy)
    return bool(prune and changed.rowcount)


# --- what follows a run's end (backend/studies/outcomes.py) ----------------------------------


def studies_of_runs(session: Session, run_ids: Sequence[int], sweep_ids: Sequence[int] = ()) -> list[int]:
    """The studies these runs are trials of, or whose final runs they are (by their sweep)."""
    ids = set(session.scalars(select(StudyTrial.study_id).where(StudyTrial.run_id.in_(list(run_ids))))) \
        if run_ids else set()
    if sweep_ids:
        ids |= set(session.scalars(select(Study.id).where(Study.final_sweep_id.in_(list(sweep_ids)))))
    return sorted(ids)


def trials_queued_again(session: Session, run_ids: Sequence[int]) -> None:
    """A trial's run retried while its study still searches trains again as the same trial:
    running, its epochs and its pruner's bookkeeping cleared (the run starts from scratch)."""
    if not run_ids:
        return
    searching = select(Study.id).where(Study.state == StudyState.searching)
    session.execute(update(StudyTrial).where(StudyTrial.run_id.in_(list(run_ids)),
                                             StudyTrial.study_id.in_(searching))
                    .values(state=TrialState.running, value=None, intermediate={}, system_attrs={},
                            pruned_epoch=None, finished_at=None))


# --- cancelling and deleting -----------------------------------------------------------------


def cancel_study(session: Session, study_id: int) -> Study:
    """No more trials; the trials and final runs queued or training are cancelled (they keep
    what they trained)."""
    study = get_study(session, study_id)
    if study.state not in ACTIVE_STATES:
        raise StudyFinished(f"study {study_id} is already {study.state}")
    session.execute(update(Study).where(Study.id == study_id).values(state=StudyState.cancelled,
                                                                      finished_at=utcnow(), version=Study.version + 1))
    session.execute(update(StudyTrial).where(StudyTrial.study_id == study_id, StudyTrial.state == TrialState.running)
                    .values(state=TrialState.failed, finished_at=utcnow()))
    session.commit()
    for run_id in _run_ids(session, study, states=(RunState.queued, RunState.running)):
        try:
            runs.request_cancel(session, run_id)
        except (runs.RunNotFound, runs.RunFinished):
            pass  # ended meanwhile
    session.refresh(study)
    return study


def _run_ids(session: Session, study: Study, states: Sequence[str] | None = None) -> list[int]:
    """The study's runs: its trials' and its final runs'."""
    trial_runs = select(StudyTrial.run_id).where(StudyTrial.study_id == study.id, StudyTrial.run_id.is_not(None))
    query = select(Run.id).where(Run.id.in_(trial_runs))
    if study.final_sweep_id is not None:
        query = select(Run.id).where(Run.id.in_(trial_runs) | (Run.sweep_id == study.final_sweep_id))
    if states:
        query = query.where(Run.state.in_(list(states)))
    return list(session.scalars(query.order_by(Run.id)))


def delete_study(session: Session, study_id: int, artifact_store=None) -> None:
    """Delete the study, its trials' runs and its final runs (with their files and their sweep)."""
    study = get_study(session, study_id)
    run_ids = _run_ids(session, study)
    sweep_id = study.final_sweep_id
    session.execute(delete(Study).where(Study.id == study_id))
    if sweep_id is not None:
        session.execute(delete(Sweep).where(Sweep.id == sweep_id))
    session.commit()
    runs.delete_runs(session, run_ids, artifact_store)


# --- summaries ---------------------------------------------------------------------------------


def arm_summaries(study: Study, trials: Sequence[StudyTrial]) -> list[dict[str, Any]]:
    out = []
    for arm in range(study.arms):
        mine = [t for t in trials if t.arm == arm]
        counts = Counter(t.state for t in mine)
        best = best_trial(mine)
        candidate, setting = arm_parts(study, arm)
        out.append({"index": arm, "candidate": arm // len(study.settings), "label": candidate["label"],
                    **setting, "space": candidate["space"], "asked": len(mine),
                    **{state.value: counts[state] for state in TrialState},
                    "best_trial": best.number if best else None, "best_value": best.value if best else None,
                    "best_params": best.params if best else None})
    return out


def trial_counts(study: Study, trials: Sequence[StudyTrial]) -> dict[str, int]:
    counts = Counter(t.state for t in trials)
    return {**{state.value: counts[state] for state in TrialState}, "total": len(trials),
            "budget": study.arms * study.trials_per_arm}


def study_outline(session: Session, study: Study) -> dict[str, Any]:
    """The study with its arms, counts and overhead: what GET /api/studies/{id} answers."""
    trials = trials_of(session, study.id)
    return {**{column: getattr(study, column) for column in (
        "id", "name", "state", "created_at", "finished_at", "dataset", "base_spec", "candidates", "settings",
        "trials_per_arm", "sampler", "pruner", "parallel_trials", "trial_seed", "final_seeds", "final_sweep_id",
        "preset")},
        "selection_rule": selection_rule(study), "arms": arm_summaries(study, trials),
        "trials": trial_counts(study, trials), "overhead_seconds": sum(t.overhead_seconds or 0.0 for t in trials)}


def trial_rows(session: Session, study: Study, arm: int | None = None) -> list[dict[str, Any]]:
    """The trials with their runs' state; their test accuracy only once the study is finished."""
    shown = study.state == StudyState.finished
    rows = session.execute(select(StudyTrial, Run.state, Run.test_accuracy).outerjoin(Run, Run.id == StudyTrial.run_id)
                           .where(StudyTrial.study_id == study.id, *([StudyTrial.arm == arm] if arm is not None else []))
                           .order_by(StudyTrial.arm, StudyTrial.number)).all()
    return [{"arm": t.arm, "number": t.number, "run_id": t.run_id, "run_state": run_state, "state": t.state,
             "params": t.params, "value": t.value, "epochs": len(t.intermediate or {}),
             "intermediate": {int(k): v for k, v in (t.intermediate or {}).items()}, "pruned_epoch": t.pruned_epoch,
             "test_accuracy": test_accuracy if shown else None, "test_hidden": not shown}
            for t, run_state, test_accuracy in rows]


def on_runs_ended(session: Session, settings: Settings, ended: Sequence[Run]) -> None:
    """Listener body: advance the studies these runs belong to."""
    study_ids = studies_of_runs(session, [r.id for r in ended], [r.sweep_id for r in ended if r.sweep_id])
    if not study_ids:
        return
    queue = WorkQueue(settings)
    try:
        for study_id in study_ids:
            advance(session, queue, study_id)
    finally:
        queue.close()
