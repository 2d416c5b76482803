"""Sweeps as plain functions over a session: create (atomically, then send the runs to the
workers), list, read progress and results, retry, delete. Runs are created and queued through backend.runs.service,
the same way POST /api/runs does it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from training.datasets.naming import backbone_of, source_dataset

from .. import pagination
from ..db import utcnow
from ..queue import WorkQueue
from ..runs import live_runs, service as runs
from ..runs.artifacts import StoreLocation
from ..runs.models import TERMINAL_STATES, Run, RunState
from ..runs.predictions import RunPredictions, load_predictions
from .analysis import Column, ComparisonTable, Row, RunResult, comparison_table
from .grid import SweepPlan
from .models import Sweep
from .paired import PairedSummary, Test, compare_table, pairing_by_origin
from .presets import PRESETS


class SweepNotFound(LookupError):
    pass


def _plural(field: str) -> str:
    words = field.replace("_", " ")
    if words.endswith("s"):
        return words
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def default_sweep_name(grid: dict[str, list[Any]], runs: int) -> str:
    """e.g. "digits: 2 methods × 3 missing rates × 5 seeds (30 runs)"."""
    datasets = ", ".join(map(str, grid.get("dataset", [])))
    varying = [f"{len(values)} {_plural(name)}" for name, values in grid.items() if len(values) > 1]
    return f"{datasets}: {' × '.join(varying) or 'one setting'} ({runs} runs)"[:200]


def create_sweep(session: Session, queue: WorkQueue, plan: SweepPlan, *, name: str, grid: dict[str, Any],
                 preset: str | None = None, preset_options: dict[str, Any] | None = None,
                 idempotency_key: str | None = None) -> tuple[Sweep, list[Run]]:
    """One transaction writes the sweep and all its runs; only then are the run ids sent, in
    order. A sweep is never half-created; if the broker fails midway, the runs not sent stay
    queued, awaiting the broker (`run.awaiting_broker`), and the reconcile step sends them when it
    is back. A key already taken raises IntegrityError (see api/idempotency.py)."""
    sweep = Sweep(name=name, created_at=utcnow(), grid=grid, preset=preset, preset_options=preset_options,
                  idempotency_key=idempotency_key)
    session.add(sweep)
    session.flush()
    rows = [runs.new_run(payload, sweep_id=sweep.id) for payload in plan.runs]
    session.add_all(rows)
    session.commit()
    runs.enqueue_committed(session, rows, queue)
    return sweep, rows


def sweep_by_idempotency_key(session: Session, key: str) -> Sweep | None:
    return session.scalar(select(Sweep).where(Sweep.idempotency_key == key))


def runs_of(session: Session, sweep_id: int) -> list[Run]:
    return list(session.scalars(select(Run).where(Run.sweep_id == sweep_id).order_by(Run.id)))


def get_sweep(session: Session, sweep_id: int) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise SweepNotFound(sweep_id)
    return sweep


def progress_of(session: Session, sweep_ids: Sequence[int],
                include_external: bool = False) -> dict[int, dict[str, Any]]:
    """Runs per state of each sweep, in one query: the sweep's own runs, and those trained
    elsewhere and logged into it only with include_external (they are counted apart, `external`)."""
    counts: dict[int, Counter] = {sweep_id: Counter() for sweep_id in sweep_ids}
    external: Counter = Counter()
    if sweep_ids:
        query = (select(Run.sweep_id, Run.state, Run.external, func.count(Run.id))
                 .where(Run.sweep_id.in_(list(sweep_ids))).group_by(Run.sweep_id, Run.state, Run.external))
        for sweep_id, state, is_external, count in session.execute(query):
            if is_external:
                external[sweep_id] += count
            if include_external or not is_external:
                counts[sweep_id][state] += count
    return {sweep_id: progress_from_counts(c, external[sweep_id]) for sweep_id, c in counts.items()}


def progress_from_counts(counts: Counter, external: int = 0) -> dict[str, Any]:
    total = sum(counts.values())
    finished = sum(counts[state] for state in TERMINAL_STATES)
    return {**{state.value: counts[state] for state in RunState}, "total": total, "done": total > 0 and finished == total,
            "external": external}


def list_sweeps(session: Session, limit: int = 50, offset: int = 0,
                cursor: str | None = None) -> tuple[list[Sweep], int, str | None]:
    """A page of sweeps, newest first, the total, and the cursor of the next page (None at the
    end; backend/pagination.py). Pages by `offset` or by `cursor`, not both."""
    pagination.one_way_to_page(cursor, offset)
    total = session.scalar(select(func.count(Sweep.id))) or 0
    query = select(Sweep).order_by(Sweep.id.desc()).limit(limit + 1)
    if cursor:
        _, sweep_id = pagination.decode(cursor, pagination.NEWEST_FIRST)
        query = query.where(Sweep.id < sweep_id)
    else:
        query = query.offset(offset)
    sweeps = list(session.scalars(query))
    next_cursor = None
    if len(sweeps) > limit:
        last = sweeps[limit - 1]
        next_cursor = pagination.encode(pagination.NEWEST_FIRST, last.id, last.id)
    return sweeps[:limit], int(total), next_cursor


def delete_sweep(session: Session, sweep_id: int, keep_runs: bool = False, store: StoreLocation | None = None) -> None:
    """Delete the sweep and, by the database's cascade, its runs and then their files — or
    keep the runs, detached."""
    get_sweep(session, sweep_id)
    run_ids = [] if keep_runs else list(session.scalars(select(Run.id).where(Run.sweep_id == sweep_id)))
    if keep_runs:
        session.execute(update(Run).where(Run.sweep_id == sweep_id).values(sweep_id=None))
    session.execute(delete(Sweep).where(Sweep.id == sweep_id))
    session.commit()
    runs.remove_artifacts(store, run_ids)


def retry_sweep(session: Session, sweep_id: int, queue: WorkQueue, store: StoreLocation | None = None) -> list[int]:
    """Queue every failed or cancelled run of the sweep again, from scratch (with the broker down,
    they wait for it)."""
    get_sweep(session, sweep_id)
    retryable = runs.RunFilters(sweep_id=sweep_id, states=runs.RETRYABLE_STATES)
    ids = list(session.scalars(select(Run.id).where(*retryable.conditions()).order_by(Run.id)))
    return runs.retry_runs(session, ids, queue, store).done


# --- results ----------------------------------------------------------------------------


def sweep_results(session: Session, sweep_id: int) -> list[RunResult]:
    query = (select(Run.id, Run.state, Run.method, Run.fusion, Run.missing_modality, Run.missing_rate, Run.seed,
                    Run.test_accuracy, Run.spec, Run.dataset, Run.external)
             .where(Run.sweep_id == sweep_id).order_by(Run.id))
    return [RunResult(*row) for row in session.execute(query)]


def modality_roles(sweep: Sweep) -> dict[str, str]:
    """Dataset modality → the paper's role name (visual, audio), for a preset sweep."""
    roles = (sweep.preset_options or {}).get("roles") or {}
    return {modality: role for role, modality in roles.items()}


def paper_context(sweep: Sweep, dataset: str | None) -> dict[str, Any] | None:
    """Which paper table the sweep's numbers are shown beside, and whether they are comparable."""
    preset = PRESETS.get(sweep.preset or "")
    if preset is None or preset.reported is None:
        return None
    source = source_dataset(dataset)  # features of RAVDESS are still RAVDESS
    same = source is not None and source.lower() in preset.paper_dataset_names
    table = preset.reported
    note = (f"Reported in the paper's {table.title} on {table.dataset} ({table.setting})."
            + ("" if same else f" This sweep runs on {dataset}: compare the trends, not the values."))
    return {"table": table.title, "dataset": table.dataset, "setting": table.setting, "same_dataset": same,
            "note": note, "figure": preset.figure, "focus": preset.focus, "assumptions": list(preset.assumptions)}


def _paper_lookup(sweep: Sweep, results: Sequence[RunResult]):
    preset = PRESETS.get(sweep.preset or "")
    if preset is None or preset.reported is None:
        return None
    roles = modality_roles(sweep)
    datasets = {r.dataset for r in results}
    common_dataset = next(iter(datasets)) if len(datasets) == 1 else None

    def lookup(row: Row, column: Column) -> float | None:
        role = roles.get(column.missing_modality)
        if role is None:
            return None
        # The extractor shows in the features dataset's name: a row per dataset when they vary.
        features = backbone_of(dict(row.extras).get("dataset", common_dataset))
        value = preset.reported.lookup(row.method, row.fusion, features, role, column.missing_rate)
        return None if value is None else value / 100

    return lookup


def run_predictions(session: Session, run_ids: Sequence[int]) -> dict[int, RunPredictions]:
    return load_predictions(session, run_ids)


def sweep_table(session: Session, sweep: Sweep, *, reference: str | None = None, test: Test = "seeds",
                include_external: bool = False) -> tuple[ComparisonTable, list[RunResult], PairedSummary]:
    """The comparison table with every cell compared, paired, to its column's reference
    (raises paired.UnknownReference for a reference that names no row or method); runs trained
    elsewhere are paired only where verified (paired.pairing_by_origin) and join Holm's family
    only with include_external."""
    results = sweep_results(session, sweep.id)
    verified = live_runs.verified_runs(session, [r.run_id for r in results if r.external])
    table = comparison_table(results, modality_roles(sweep), _paper_lookup(sweep, results))
    finished = [run_id for row in table.rows for cell in row.cells for run_id in cell.run_ids]
    summary = compare_table(table, reference=reference, test=test, predictions=run_predictions(session, finished),
                            include_external=include_external, pairing=pairing_by_origin(results, verified))
    return table, results, summary
