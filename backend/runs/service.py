"""What the API calls about runs, as plain functions over a session: create, list, read,
cancel, retry, update, delete, and read metrics. A worker holding a run's lease calls lease.py;
the reconcile step is backend/reconcile.py; the life cycle they share with dataset jobs is
backend/lifecycle."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby

from sqlalchemy import ColumnElement, Row, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import pagination
from ..db import utcnow
from ..lifecycle import api as lifecycle
from ..lifecycle.api import AlreadyFinished as RunFinished  # noqa: F401  (raised from here)
from ..queue import BUILTIN_METHOD_NAMES, WorkQueue
from ..refused import Refused
from ..settings import Settings
from ..workers import service as workers
from . import live_runs, outcomes, query as run_query
from .artifacts import StoreLocation, remove_run_files
from .downsample import downsample_min_max
from .ingest import Point, insert_points
from .models import SPEC_COLUMNS, ConfusionMatrix, MetricPoint, Run, RunState, RunTag
from .predictions import pack_labels
from .schemas import ExternalRunCreate, RunCreate
from .system import SystemMetricPoint

log = logging.getLogger("missmod.runs")


class RunNotFound(LookupError):
    pass


class NoConfusionMatrix(LookupError):
    """The run has no confusion matrix yet (not finished, or cancelled before its first epoch)."""


class RunNotRetryable(RuntimeError):
    """Only a failed or cancelled run can be retried."""


def default_run_name(spec: RunCreate) -> str:
    return f"{spec.method}-{spec.fusion} {spec.dataset} {spec.missing_modality}@{spec.missing_rate:g} s{spec.seed}"


def new_run(payload: RunCreate, sweep_id: int | None = None, idempotency_key: str | None = None) -> Run:
    """The row of a validated spec, not yet added to a session. It counts as awaiting the
    broker until its id is sent: if the sender dies in between, the reconcile step sends it."""
    now = utcnow()
    return Run(
        name=payload.name or default_run_name(payload),
        spec=payload.training_spec(),
        **{column: getattr(payload, column) for column in SPEC_COLUMNS},
        state=RunState.queued,
        created_at=now,
        awaiting_broker_since=now,
        sweep_id=sweep_id,
        idempotency_key=idempotency_key,
    )


def enqueue_committed(session: Session, runs: Sequence[Run], queue: WorkQueue) -> bool:
    """Send the ids of runs already committed, in order; True when all were sent. If the broker
    cannot be reached, the runs not sent stay queued, awaiting the broker (lifecycle/api.py)."""
    methods = {run.id: run.method for run in runs}
    sent = lifecycle.enqueue_committed(session, Run, runs, lambda run_id: queue.send_run(run_id, methods[run_id]))
    if any(method not in BUILTIN_METHOD_NAMES for method in methods.values()):
        try:  # a plugin's method: say now if no live worker can train it (the reconcile step keeps it up to date)
            workers.mark_waiting_runs(session, queue.heartbeat_timeout, list(methods))
            for run in runs:
                session.refresh(run)
        except Exception as error:  # bookkeeping: never what fails a submission
            session.rollback()
            log.warning("could not say which runs wait for a worker: %s", error)
    return sent


def create_run(session: Session, payload: RunCreate, queue: WorkQueue, idempotency_key: str | None = None) -> Run:
    """Commit the run, then send its id: a worker never sees an id that is not in the
    database. If the broker cannot be reached the run stays queued, awaiting the broker
    (`run.awaiting_broker`). A key already taken raises IntegrityError (see api/idempotency.py)."""
    run = new_run(payload, idempotency_key=idempotency_key)
    session.add(run)
    session.commit()
    enqueue_committed(session, [run], queue)
    return run


def run_by_idempotency_key(session: Session, key: str) -> Run | None:
    return session.scalar(select(Run).where(Run.idempotency_key == key))
def log_external_run(session: Session, payload: ExternalRunCreate, settings: Settings | None = None) -> Run:
    """Record a run trained elsewhere, finished, in one transaction: the row (marked external,
    never sent to a worker), its points and its confusion matrix. With test predictions on
    missmod's split for its setting (checked: live_runs.protocol_result) it pairs with missmod's
    runs test sample by test sample."""
    now = utcnow()
    result = None
    if payload.test_predictions is not None or payload.protocol_digest is not None:
        if settings is None:
            raise ValueError("checking test predictions needs the settings (where the datasets are)")
        result = live_runs.protocol_result(settings, live_runs.setting_of(payload.spec, payload.dataset, payload.seed,
                                                                          payload.missing_rate),
                                           payload.test_predictions, payload.protocol_digest, payload.confusion)
    epochs = max((p.epoch for p in payload.metrics), default=0)
    best_epoch = payload.best_epoch if payload.best_epoch is not None else (epochs if payload.metrics else None)
    name = payload.name or (f"{payload.method}-{payload.fusion} {payload.dataset} "
                            f"{payload.missing_modality}@{payload.missing_rate:g} s{payload.seed} (external)")
    run = Run(
        name=name[:200], spec=payload.run_spec(), dataset=payload.dataset, method=payload.method,
        fusion=payload.fusion, missing_modality=payload.missing_modality, missing_rate=payload.missing_rate,
        seed=payload.seed, state=RunState.succeeded, created_at=now, started_at=now, finished_at=now,
        epochs_completed=epochs, test_accuracy=payload.test_accuracy, val_accuracy=payload.val_accuracy,
        best_epoch=best_epoch, info={"external": True, "source": payload.source, **(result.info if result else {})},
        sweep_id=payload.sweep_id, external=True,
    )
    if result is not None and result.accuracy is not None and payload.test_accuracy is None:
        run.test_accuracy = result.accuracy
    session.add(run)
    try:
        session.flush()
    except IntegrityError:  # the one reference a new external row can break: runs.sweep_id
        session.rollback()
        raise Refused([{"type": "value_error", "loc": ("body", "sweep_id"), "input": payload.sweep_id,
                        "msg": f"no sweep {payload.sweep_id}"}]) from None
    # The last value given for an (epoch, name) wins, as a re-recorded epoch would.
    points = {(p.epoch, p.name): p.value for p in payload.metrics}
    # JSON has no NaN: a diverged value is stored as NULL, as the worker stores it. Written as the
    # worker writes them (ingest.py: one statement on PostgreSQL, whatever their number), not as
    # an ORM object each: three 16,000-point posts took 10 s each and slowed every other request.
    insert_points(session.connection(), run.id,
                  [Point(epoch, 0, name, value if value is not None and math.isfinite(value) else None)
                   for (epoch, name), value in points.items()], recorded_at=now)
    if result is not None and result.predictions is not None:
        session.add(ConfusionMatrix(run_id=run.id, epoch=best_epoch or 0, classes=result.classes,
                                    counts=result.confusion,
                                    test_predictions=pack_labels(result.predictions, len(result.classes)),
                                    test_labels=pack_labels(result.labels, len(result.classes))))
    elif payload.confusion is not None:
        session.add(ConfusionMatrix(run_id=run.id, epoch=best_epoch or 0, classes=list(payload.confusion.classes),
                                    counts=payload.confusion.counts))
    session.commit()
    session.refresh(run)
    return run


# --- listing ----------------------------------------------------------------------------

# What the runs table can be sorted by (backend/runs/query.py): its columns, results and every
# spec field; `id` is creation order.
SORT_COLUMNS = run_query.SORTABLE
SORT_CHOICES = sorted([*SORT_COLUMNS, *(f"-{name}" for name in SORT_COLUMNS)])


@dataclass(frozen=True)
class RunFilters:
    """The filters of GET /api/runs; None (or empty) means no filter."""

    states: Sequence[str] = ()
    dataset: str | None = None
    method: str | None = None
    fusion: str | None = None
    missing_modality: str | None = None
    missing_rate: float | None = None
    sweep_id: int | None = None
    tag: str | None = None
    search: str | None = None  # substring of the name, case-insensitive
    where: Sequence[run_query.Condition] = ()  # `where` conditions (backend/runs/query.py)
    external: bool | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.states:
            where.append(Run.state.in_(list(self.states)))
        for column, value in ((Run.dataset, self.dataset), (Run.method, self.method), (Run.fusion, self.fusion),
                              (Run.missing_modality, self.missing_modality)):
            if value:
                where.append(column == value)
        if self.missing_rate is not None:
            # Rates are typed by people (0.9) and stored as doubles: compare with a tolerance.
            where.append(Run.missing_rate.between(self.missing_rate - 1e-9, self.missing_rate + 1e-9))
        if self.sweep_id is not None:
            where.append(Run.sweep_id == self.sweep_id)
        if self.tag:
            where.append(Run.id.in_(select(RunTag.run_id).where(RunTag.tag == self.tag)))
        if self.search:
            where.append(Run.name.icontains(self.search, autoescape=True))
        if self.external is not None:
            where.append(Run.external.is_(self.external))
        where.extend(condition.sql() for condition in self.where)
        return where


def list_runs(session: Session, filters: RunFilters = RunFilters(), *, sort: str = "-id", limit: int = 50,
              offset: int = 0, cursor: str | None = None) -> tuple[list[Run], int, str | None]:
    """One page of runs, the total that match, and the cursor of the next page (None at the
    end). Pages either by `offset` or, faster deep into a long list, by `cursor`."""
    descending = sort.startswith("-")
    key = sort.lstrip("-")
    column, kind = run_query.sort_expression(key)
    pagination.one_way_to_page(cursor, offset)
    where = filters.conditions()
    total = session.scalar(select(func.count(Run.id)).where(*where)) or 0
    order = [column.desc().nulls_last(), Run.id.desc()] if descending else [column.asc().nulls_last(), Run.id.asc()]
    query = select(Run).where(*where).order_by(*order).limit(limit + 1)
    if cursor:
        value, run_id = pagination.decode(cursor, sort, kind)
        query = query.where(pagination.after(column, Run.id, descending, value, run_id))
    elif offset:
        query = query.offset(offset)
    runs = list(session.scalars(query))
    next_cursor = None
    if len(runs) > limit:
        runs = runs[:limit]
        last = runs[-1]
        next_cursor = pagination.encode(sort, run_query.sort_value(last, key), last.id)
    return runs, int(total), next_cursor


def get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(run_id)
    return run


def request_cancel(session: Session, run_id: int) -> Run:
    """A queued run is cancelled at once; a running one is flagged and stops at the end of
    its current epoch, keeping its metrics."""
    return lifecycle.request_cancel(session, get_run(session, run_id))


def update_run(session: Session, run_id: int, changes: Mapping[str, object]) -> Run:
    """Set the name, the note or the tags (the whole set) of a run."""
    run = get_run(session, run_id)
    if changes.get("name") is not None:
        run.name = str(changes["name"])
    if "note" in changes:
        run.note = changes["note"] or None
    if "tags" in changes:
        wanted = list(dict.fromkeys(changes["tags"] or []))
        kept = [row for row in run.tag_rows if row.tag in wanted]
        have = {row.tag for row in kept}
        run.tag_rows = kept + [RunTag(tag=tag) for tag in wanted if tag not in have]
    session.commit()
    session.refresh(run)
    return run


def remove_artifacts(store: StoreLocation | None, run_ids: Iterable[int]) -> None:
    """The runs' files in the artifact store (None: leave them)."""
    remove_run_files(store, run_ids)


RETRYABLE_STATES = (RunState.failed, RunState.cancelled)  # what retry_run (and a sweep's retry) takes


@dataclass
class BulkOutcome:
    """What a bulk action did to each run asked for."""

    done: list[int] = field(default_factory=list)
    not_found: list[int] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (id, why)


def retry_run(session: Session, run_id: int, queue: WorkQueue, store: StoreLocation | None = None) -> Run:
    """Queue a failed or cancelled run again under the same id (so its sweep sees the new
    result in the same cell), from scratch (retry_runs). RunNotRetryable when it is not failed or
    cancelled (a concurrent retry took it first), RunNotFound when it is gone (deleted meanwhile)."""
    outcome = retry_runs(session, [run_id], queue, store)
    if outcome.refused:
        raise RunNotRetryable(outcome.refused[0][1])
    run = session.get(Run, run_id, populate_existing=True) if outcome.done else None
    if run is None:
        raise RunNotFound(run_id)
    return run


def _why_not_retryable(run_id: int, state: str, external: bool) -> str | None:
    if external:
        return f"run {run_id} was trained elsewhere (external): there is nothing to queue"
    if state not in RETRYABLE_STATES:
        return f"run {run_id} is {state}; only failed or cancelled runs can be retried"
    return None


def retry_runs(session: Session, run_ids: Sequence[int], queue: WorkQueue,
               store: StoreLocation | None = None) -> BulkOutcome:
    """Queue failed or cancelled runs again, from scratch. Their old points and matrices are
    removed: points are written insert-or-ignore per (run, epoch, step, name), so stale ones
    would shadow the new; and their files, since a worker resumes a run from the checkpoint it
    finds there. One conditional UPDATE moves them from failed or cancelled to queued: of
    concurrent retries of one run exactly one wins and sends its id once, the others find it
    queued (refused); a run deleted meanwhile is not found. The ids are read in one query, so
    thousands of unknown ones cost one round trip."""
    ids = list(dict.fromkeys(run_ids))
    outcome = BulkOutcome()
    if not ids:
        return outcome

    def read(wanted: Sequence[int]) -> dict[int, tuple[str, bool]]:
        return {row.id: (row.state, row.external)
                for row in session.execute(select(Run.id, Run.state, Run.external).where(Run.id.in_(wanted)))}

    found = read(ids)
    candidates = [i for i in ids if i in found and _why_not_retryable(i, *found[i]) is None]
    rows: list[Run] = []
    if candidates:
        # Starts over: no checkpoint of an attempt so far is resumed from, even one whose file survived.
        won = list(session.scalars(
            update(Run).where(Run.id.in_(candidates), Run.state.in_(RETRYABLE_STATES), Run.external.is_(False))
            .values(**lifecycle.fresh_queue_values(), resume_after_attempt=Run.attempts, epochs_completed=0,
                    test_accuracy=None, val_accuracy=None, best_epoch=None, info=None,
                    environment=None)
            .returning(Run.id).execution_options(synchronize_session=False)))
        if won:
            for table in (MetricPoint, ConfusionMatrix, SystemMetricPoint):
                session.execute(delete(table).where(table.run_id.in_(won)))
            rows = list(session.scalars(select(Run).where(Run.id.in_(won)).order_by(Run.id)
                                        .execution_options(populate_existing=True)))
            outcomes.queued_again(session, rows)  # its sweep, say, has a run to finish again
        session.commit()
        lost = [i for i in candidates if i not in set(won)]
        if lost:  # to a concurrent retry (now queued) or a delete (gone)
            for run_id in lost:
                found.pop(run_id)
            found.update(read(lost))
    done = {run.id for run in rows}
    for run_id in ids:
        if run_id in done:
            outcome.done.append(run_id)
        elif run_id not in found:
            outcome.not_found.append(run_id)
        else:
            outcome.refused.append((run_id, _why_not_retryable(run_id, *found[run_id])
                                    or f"run {run_id} was retried meanwhile"))
    if rows:
        remove_artifacts(store, [run.id for run in rows])
        enqueue_committed(session, rows, queue)
    return outcome


def delete_runs(session: Session, run_ids: Iterable[int], store: StoreLocation | None = None) -> int:
    """Delete runs with their points, matrices and tags (by the database's cascades) and their
    files. A worker still training one of them fails its next write and stops."""
    ids = list(run_ids)
    if not ids:
        return 0
    deleted = session.execute(delete(Run).where(Run.id.in_(ids))).rowcount
    session.commit()
    remove_artifacts(store, ids)
    return int(deleted or 0)


def bulk_cancel(session: Session, run_ids: Sequence[int]) -> BulkOutcome:
    outcome = BulkOutcome()
    for run_id in dict.fromkeys(run_ids):
        try:
            request_cancel(session, run_id)
            outcome.done.append(run_id)
        except RunNotFound:
            outcome.not_found.append(run_id)
        except RunFinished as error:
            outcome.refused.append((run_id, str(error)))
    return outcome


def bulk_retry(session: Session, run_ids: Sequence[int], queue: WorkQueue,
               store: StoreLocation | None = None) -> BulkOutcome:
    """Retry each that is failed or cancelled (retry_runs); with the broker down the runs wait for it
    (`awaiting_broker`), as one retry does."""
    return retry_runs(session, run_ids, queue, store)


def bulk_delete(session: Session, run_ids: Sequence[int], store: StoreLocation | None = None) -> BulkOutcome:
    ids = list(dict.fromkeys(run_ids))
    existing = set(session.scalars(select(Run.id).where(Run.id.in_(ids)))) if ids else set()
    delete_runs(session, [i for i in ids if i in existing], store)
    return BulkOutcome(done=[i for i in ids if i in existing], not_found=[i for i in ids if i not in existing])


# Points are read as plain rows, not ORM objects: a long run has tens of thousands, and
# building an object per point was most of the time of a metrics request.
POINT_COLUMNS = (MetricPoint.id, MetricPoint.epoch, MetricPoint.name, MetricPoint.value, MetricPoint.step)


def metrics_after(session: Session, run_id: int, after: int = 0, limit: int = 10_000) -> list[Row]:
    """Points (id, epoch, name, value, step) recorded after the cursor `after` (a point id), in the
    order they landed."""
    query = (
        select(*POINT_COLUMNS)
        .where(MetricPoint.run_id == run_id, MetricPoint.id > after)
        .order_by(MetricPoint.id)
        .limit(limit)
    )
    # Through the connection, not the ORM session: a plain Core query needs none of the ORM's
    # row handling, which took half of a long run's metrics request (bench/api_views.py).
    return session.connection().execute(query).all()


def metrics_for_display(session: Session, run_id: int, max_points: int) -> tuple[list[Row], int, int]:
    """Every series of the run cut to about `max_points` points (extremes kept), the cursor of
    the newest point (a live stream appends from there), and how many points there were."""
    points = session.connection().execute(
        select(*POINT_COLUMNS).where(MetricPoint.run_id == run_id).order_by(MetricPoint.name, MetricPoint.epoch, MetricPoint.step)
    ).all()
    cursor = max((p.id for p in points), default=0)
    kept: list[Row] = []
    for _, series in groupby(points, key=lambda p: p.name):
        kept.extend(downsample_min_max(list(series), max_points, lambda p: p.value))
    return kept, cursor, len(points)


def confusion_of(session: Session, run_id: int) -> ConfusionMatrix:
    matrix = session.get(ConfusionMatrix, run_id)
    if matrix is None:
        raise NoConfusionMatrix(run_id)
    return matrix
