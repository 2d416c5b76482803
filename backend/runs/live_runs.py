"""Live runs: a script's own training loop logs a run while it trains (missmod/client.py's
`start_run`). The run is a row like a worker's: `running` under a lease that the script holds
(its `lease` name stands where a worker's name does), its points written through the same
ingestion (recording.record_batch: insert-or-ignore, with a heartbeat, in one transaction), so
the run page, the runs list and the live stream show them as they show a worker's. The script
heartbeats; when it stops (killed, its host lost) the reconcile step marks the run lost
(`mark_lost`: failed, with that reason) once LIVE_RUN_TIMEOUT has passed without one.

It is marked `external` (trained outside missmod: its own row in tables, never retried). Its
test predictions, when it uploads them on missmod's split for its setting (training/protocol.py,
GET /api/protocol), make it pair with missmod's runs test sample by test sample: the split is
checked here (`protocol_result`), and the run's info says so (`protocol.verified`)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from training.datasets import DatasetError
from training.protocol import Protocol, ProtocolKey, protocol_for

from ..db import utcnow
from ..lifecycle import lease
from ..lifecycle.models import State, describe_holder
from ..refused import Refused
from ..settings import Settings
from . import ingest, recording
from .models import Run, RunState
from .schemas import ExternalConfusion, LiveFail, LiveFinish, LivePoints, LiveRunCreate

log = logging.getLogger("missmod.live_runs")

LEASE_PREFIX = "live:"  # a live run's holder: "live:<host>/<pid>/<random>"


def _refused(location: tuple, message: str, value: Any = None) -> Refused:
    return Refused([{"type": "value_error", "loc": location, "input": value, "msg": message}])


# --- the protocol: which samples a setting's runs see ---------------------------------------


def setting_of(spec: dict[str, Any], dataset: str, seed: int, missing_rate: float) -> ProtocolKey:
    """The protocol's setting of a run (an external run's free-form spec may name the split)."""
    split_by = spec.get("split_by") if spec.get("split_by") in ("group", "subject") else "group"
    other = spec.get("other_missing_rate")
    return ProtocolKey(dataset=dataset, seed=seed, missing_rate=missing_rate,
                       other_missing_rate=float(other) if isinstance(other, (int, float)) else 0.0, split_by=split_by)


def protocol(settings: Settings, key: ProtocolKey, location: tuple = ("query", "dataset")) -> Protocol:
    """The split and missing mask missmod's workers use for `key` (a 422 when the dataset cannot
    be read here or cannot be split so)."""
    try:
        return protocol_for(key, settings.data_dir, settings.video_options())
    except (DatasetError, LookupError) as error:
        raise _refused(location, f"no protocol for dataset {key.dataset!r}: {error}", key.dataset) from None
    except (ValueError, OSError) as error:  # a subject split of a dataset without subjects; an unreadable file
        raise _refused(location, str(error), key.dataset) from None


@dataclass(frozen=True)
class ProtocolResult:
    """What a run's test predictions on missmod's split make of its result (None without them)."""

    info: dict[str, Any]
    classes: list[str] | None = None
    predictions: list[int] | None = None
    labels: list[int] | None = None
    confusion: list[list[int]] | None = None
    accuracy: float | None = None


def protocol_result(settings: Settings, key: ProtocolKey, predictions: Sequence[int] | None, digest: str | None,
                    confusion: ExternalConfusion | None, where: str = "body") -> ProtocolResult:
    """Check what a run declares of missmod's split for `key`: the digest of the split it trained
    on, and its test predictions (one per test group, classes in range); their labels, matrix and
    accuracy follow. A run verified so is paired with missmod's runs: by test sample (McNemar)
    with predictions, by seed only without."""
    found = protocol(settings, key, (where, "test_predictions" if predictions is not None else "protocol_digest"))
    if digest is not None and digest != found.digest:
        raise _refused((where, "protocol_digest"), "this is not the digest of missmod's split for this setting "
                       f"(dataset {key.dataset}, seed {key.seed}, missing rate {key.missing_rate:g}): get it from "
                       "GET /api/protocol", digest)
    verified = {"protocol": {"digest": found.digest, "verified": True, "test_predictions": predictions is not None}}
    if predictions is None:
        return ProtocolResult(info=verified)
    n, k = len(found.test_labels), len(found.classes)
    if len(predictions) != n:
        raise _refused((where, "test_predictions"), f"{len(predictions)} predictions given; missmod's test set for "
                       f"this setting has {n} (one per test group, in the order of GET /api/protocol's test_groups)")
    predicted = np.asarray(predictions, dtype=np.int64)
    if n and predicted.max() >= k:
        raise _refused((where, "test_predictions"), f"a class index past the dataset's {k} classes")
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (found.test_labels, predicted), 1)
    if confusion is not None and (list(confusion.classes) != found.classes or confusion.counts != counts.tolist()):
        raise _refused((where, "confusion"), "the confusion matrix disagrees with the test predictions (leave it out: "
                       "it is computed from them)")
    grouped = len(found.test_groups) < len(found.test)
    return ProtocolResult(
        info={**verified, "n_test": int(len(found.test)), "n_test_groups": n,
              "accuracy_level": "group" if grouped else "sample"},
        classes=found.classes, predictions=predicted.tolist(), labels=found.test_labels.tolist(),
        confusion=counts.tolist(), accuracy=float((predicted == found.test_labels).mean()) if n else 0.0)


def verified_runs(session: Session, run_ids: Sequence[int]) -> set[int]:
    """Of these runs trained elsewhere, those whose test predictions were checked on missmod's split."""
    if not run_ids:
        return set()
    rows = session.execute(select(Run.id, Run.info).where(Run.id.in_(list(run_ids))))
    return {run_id for run_id, info in rows
            if isinstance(info, dict) and isinstance(info.get("protocol"), dict) and info["protocol"].get("verified")}


# --- a live run's life --------------------------------------------------------------------


def new_lease(host: str | None = None) -> str:
    return f"{LEASE_PREFIX}{(host or 'script')[:40]}/{uuid.uuid4().hex[:16]}"


def start(session: Session, payload: LiveRunCreate) -> Run:
    """The run, `running` under a new lease, its heartbeat now."""
    now = utcnow()
    name = payload.name or (f"{payload.method}-{payload.fusion} {payload.dataset} "
                            f"{payload.missing_modality}@{payload.missing_rate:g} s{payload.seed} (live)")
    spec = payload.run_spec()
    if payload.epochs is not None:
        spec.setdefault("epochs", payload.epochs)
    info: dict[str, Any] = {"external": True, "live": True, "source": payload.source}
    if payload.steps_per_epoch:
        info["steps_per_epoch"] = payload.steps_per_epoch
    host = (payload.environment or {}).get("host")
    run = Run(name=name[:200], spec=spec, dataset=payload.dataset, method=payload.method, fusion=payload.fusion,
              missing_modality=payload.missing_modality, missing_rate=payload.missing_rate, seed=payload.seed,
              state=RunState.running, created_at=now, started_at=now, heartbeat_at=now, attempts=1,
              worker=new_lease(host if isinstance(host, str) else None), info=info, environment=payload.environment,
              sweep_id=payload.sweep_id, external=True)
    session.add(run)
    try:
        session.commit()
    except Exception:
        session.rollback()
        if payload.sweep_id is not None:  # the one reference a new row can break
            raise _refused(("body", "sweep_id"), f"no sweep {payload.sweep_id}", payload.sweep_id) from None
        raise
    session.refresh(run)
    return run


class LiveRunGone(RuntimeError):
    """The run is no longer this lease's: lost (its heartbeat stopped), ended, or deleted."""


def _held(call):
    try:
        return call()
    except lease.LeaseLost as error:
        raise LiveRunGone(str(error)) from None


def write_points(session: Session, run_id: int, batch: LivePoints) -> bool:
    """A batch of points, exactly once, with a heartbeat; returns the cancel flag."""
    points = [ingest.Point(epoch, step, batch.names[name], ingest.finite_or_none(value) if value is not None else None)
              for epoch, step, name, value in zip(batch.epoch, batch.step, batch.name, batch.value)]
    values = {} if batch.epochs_completed is None else {"epochs_completed": batch.epochs_completed}
    return _held(lambda: recording.record_batch(session, run_id, points, batch.lease, **values))


def heartbeat(session: Session, run_id: int, holder: str) -> bool:
    return _held(lambda: lease.record(session, Run, run_id, holder))


def finish(session: Session, settings: Settings, run_id: int, payload: LiveFinish) -> Run:
    """End the run as succeeded (cancelled, when a cancel was asked meanwhile) with its result."""
    run = session.get(Run, run_id)
    if run is None or run.state != State.running or run.worker != payload.lease:
        raise LiveRunGone(f"run {run_id} is not running under this lease")
    info = {**(run.info if isinstance(run.info, dict) else {})}
    best_epoch = payload.best_epoch if payload.best_epoch is not None else run.epochs_completed
    classes, confusion, accuracy = None, None, payload.test_accuracy
    predictions = labels = None
    if payload.confusion is not None:
        classes, confusion = list(payload.confusion.classes), payload.confusion.counts
    if payload.test_predictions is not None or payload.protocol_digest is not None:
        result = protocol_result(settings, setting_of(run.spec or {}, run.dataset, run.seed, run.missing_rate),
                                 payload.test_predictions, payload.protocol_digest, payload.confusion)
        info.update(result.info)
        if result.predictions is not None:
            classes, confusion, predictions, labels = (result.classes, result.confusion, result.predictions,
                                                       result.labels)
            accuracy = accuracy if accuracy is not None else result.accuracy
    _held(lambda: recording.finish_run(
        session, run_id, cancelled=bool(run.cancel_requested), test_accuracy=accuracy,
        val_accuracy=payload.val_accuracy, best_epoch=best_epoch, classes=classes or [], confusion=confusion,
        info=info, worker=payload.lease, test_predictions=predictions, test_labels=labels))
    session.expire_all()
    return session.get(Run, run_id)


def fail(session: Session, run_id: int, payload: LiveFail) -> Run:
    """The script's loop raised: the run ends failed with its error (its points kept)."""
    run = session.get(Run, run_id)
    if run is None or run.state != State.running or run.worker != payload.lease:
        raise LiveRunGone(f"run {run_id} is not running under this lease")
    lease.fail(session, Run, run_id, payload.error, payload.detail, worker=payload.lease)
    session.expire_all()
    return session.get(Run, run_id)


def mark_lost(session: Session, timeout: float, now: datetime | None = None) -> list[int]:
    """Live runs whose script sent nothing for `timeout` seconds end failed, as lost (the reconcile
    step; safe from several processes: each change is conditional on the row as it was read)."""
    now = now or utcnow()
    stale_before = now - timedelta(seconds=timeout)
    lost = []
    live = (Run.state == State.running, Run.external.is_(True), Run.worker.startswith(LEASE_PREFIX),
            Run.heartbeat_at < stale_before)
    for row in session.scalars(select(Run).where(*live)).all():
        error = (f"lost: the script logging it sent no heartbeat for {timeout:g} s (LIVE_RUN_TIMEOUT; "
                 f"{describe_holder(row)}): it was killed, or its host or network went away")
        changed = session.execute(update(Run).where(Run.id == row.id, Run.worker == row.worker, *live)
                                  .values(state=State.failed, finished_at=now, error=error))
        if changed.rowcount == 1:
            log.warning("run %s: %s", row.id, error)
            lost.append(row.id)
    session.commit()
    return lost
