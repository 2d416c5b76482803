"""Batched metric ingestion (exactly once on SQLite and PostgreSQL), the columnar metrics payload
with shape-preserving thinning, and ETag/304 for finished runs. Real app, real databases."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from sqlalchemy import func, select

from backend.db import session_factory
from backend.lifecycle.lease import LeaseLost
from backend.migrate import upgrade
from backend.runs import recording
from backend.runs.downsample import downsample_min_max
from backend.runs.ingest import BatchingWriter, Point, points_of
from backend.runs.models import MetricPoint
from backend.runs.series import lttb_indices, min_max_indices
from tests.support import as_worker

SPEC = {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom", "missing_rate": 0.9,
        "epochs": 2, "seed": 0}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_writer_batches_by_age_and_size_and_on_flush():
    batches = []
    clock = Clock()
    writer = BatchingWriter(lambda points, values: batches.append((list(points), dict(values))) or "cancel?",
                            interval=0.5, max_points=10, clock=clock)
    assert writer.add(points_of(1, 1, {"step/train_loss": 1.0})) == (False, None)
    clock.now = 0.4
    assert writer.add(points_of(1, 2, {"step/train_loss": 0.9}), progress={"step": 2})[0] is False
    clock.now = 0.5  # the oldest point is now 0.5 s old
    assert writer.add(points_of(1, 3, {"step/train_loss": 0.8}), progress={"step": 3}) == (True, "cancel?")
    assert [p.step for p in batches[0][0]] == [1, 2, 3] and batches[0][1] == {"progress": {"step": 3}}
    written, _ = writer.add([Point(1, 4, f"m{i}", 0.0) for i in range(10)])  # full before it is old
    assert written and len(batches[1][0]) == 10 and writer.pending == 0
    writer.add(points_of(1, 5, {"step/train_loss": float("nan")}))
    writer.flush(epochs_completed=1)
    assert batches[2] == ([Point(1, 5, "step/train_loss", None)], {"epochs_completed": 1})
    assert writer.points_written == 14 and writer.batches_written == 3


def test_a_failed_write_keeps_the_points_for_the_retry():
    attempts = []

    def write(points, values):
        attempts.append(len(points))
        if len(attempts) == 1:
            raise ConnectionError("database down")

    writer = BatchingWriter(write, interval=10.0)
    writer.add(points_of(1, 10, {"a": 1.0, "b": 2.0}))
    with pytest.raises(ConnectionError):
        writer.flush()
    writer.flush()
    assert attempts == [2, 2] and writer.pending == 0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ingest.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


def test_batches_are_written_exactly_once_even_when_replayed(database_url, client_for, tmp_path):
    from backend.runs.models import Run, RunState
    from backend.db import utcnow

    sessions = session_factory(database_url)
    with sessions() as session:
        run = Run(name="r", spec={}, dataset="digits", method="mle", fusion="add", missing_modality="bottom",
                  missing_rate=0.5, seed=0, state=RunState.queued, created_at=utcnow())
        session.add(run)
        session.commit()
        run_id = run.id
        assert as_worker.start_run(session, run_id, "w1") is not None

    def write(points, values):
        with sessions() as session:
            return recording.record_batch(session, run_id, points, "w1", **values)

    def play(writer, epochs):
        for epoch in range(1, epochs + 1):
            for step in range((epoch - 1) * 20 + 1, epoch * 20 + 1):
                writer.add(points_of(epoch, step, {"step/train_loss": 1 / step, "step/lr": 1e-3}),
                           progress={"step": step})
            writer.flush(epochs_completed=epoch)
            writer.flush()  # an empty flush: a heartbeat, no points
            write(points_of(epoch, epoch * 20, {"train_loss": 1 / epoch}), {"epochs_completed": epoch})

    play(BatchingWriter(write, interval=0.0), 3)
    play(BatchingWriter(write, interval=60.0, max_points=7), 4)  # a resumed run replays epochs 1–3 in other batches
    with sessions() as session:
        counts = session.execute(select(MetricPoint.name, func.count()).where(MetricPoint.run_id == run_id)
                                 .group_by(MetricPoint.name)).all()
        assert dict(counts) == {"step/train_loss": 80, "step/lr": 80, "train_loss": 4}
        steps = session.scalars(select(MetricPoint.step).where(MetricPoint.run_id == run_id,
                                                               MetricPoint.name == "step/lr")
                                .order_by(MetricPoint.id)).all()
        assert steps == list(range(1, 81))
        run = session.get(Run, run_id)
        assert run.epochs_completed == 4 and run.progress == {"step": 80}
    with pytest.raises(LeaseLost):  # a worker that lost the run writes nothing
        with sessions() as session:
            recording.record_batch(session, run_id, points_of(9, 999, {"x": 1.0}), "w2")


def test_min_max_thinning_keeps_what_the_reference_keeps():
    rng = random.Random(1)
    for n, max_points in ((10_000, 200), (1_001, 50), (57, 10), (5, 10)):
        values = [rng.gauss(0, 1) if rng.random() > 0.01 else None for _ in range(n)]
        reference = [i for i, _ in downsample_min_max(list(enumerate(values)), max_points, lambda p: p[1])]
        as_array = np.array([math.nan if v is None else v for v in values])
        kept = min_max_indices(as_array, max_points).tolist()
        # Ties may pick another index of the same value; the values kept are the same.
        assert [values[i] for i in kept] == [values[i] for i in reference] or kept == reference


def test_lttb_keeps_the_ends_the_spike_and_the_gaps():
    x = np.arange(10_000)
    values = np.sin(x / 500.0)
    values[6543] = 5.0
    values[2000] = np.nan
    kept = lttb_indices(x, values, 300)
    assert kept[0] == 0 and kept[-1] == 9_999 and 6543 in kept and 2000 in kept
    assert len(kept) <= 301 and (np.diff(kept) > 0).all()


def test_columns_thinning_and_etag_of_a_finished_run(embedded_settings, client_for):
    client = client_for(embedded_settings)
    run = client.post("/api/runs", json=SPEC).json()
    sessions = session_factory(embedded_settings.database_url)
    with sessions() as session:
        as_worker.start_run(session, run["id"], "test")
        points = [Point(1 + s // 100, s, "step/train_loss", 1.0 / s) for s in range(1, 1001)]
        points[500] = Point(points[500].epoch, points[500].step, "step/train_loss", None)
        recording.record_batch(session, run["id"], points)
        for epoch in range(1, 11):
            as_worker.record_epoch(session, run["id"], epoch, {"val_accuracy": 0.5 + (epoch == 7) * 0.4},
                                 step=epoch * 100)
    path = f"/api/runs/{run['id']}/metrics"

    full = client.get(path, params={"format": "columns"})
    assert full.status_code == 200 and "etag" not in full.headers  # still running: no ETag
    body = full.json()
    assert body["total"] == 1010 and not body["downsampled"] and set(body["series"]) == {"step/train_loss",
                                                                                            "val_accuracy"}
    loss = body["series"]["step/train_loss"]
    assert loss["step"] == list(range(1, 1001)) and loss["value"][500] is None and loss["epoch"][0] == 1
    assert body["series"]["val_accuracy"] == {"epoch": list(range(1, 11)), "step": list(range(100, 1001, 100)),
                                              "value": [0.5] * 6 + [0.9] + [0.5] * 3}
    listed = client.get(path).json()
    assert body["cursor"] == listed["cursor"] and {"epoch": 7, "step": 700, "name": "val_accuracy",
                                                   "value": 0.9} in listed["points"]

    for method in ("minmax", "lttb"):
        thin = client.get(path, params={"format": "columns", "max_points": 100, "downsample": method}).json()
        loss = thin["series"]["step/train_loss"]
        assert thin["downsampled"] and len(loss["step"]) <= 102 and loss["step"][0] == 1 and loss["step"][-1] == 1000
        assert None in loss["value"] and loss["value"][0] == 1.0  # the gap and the maximum survive
    assert client.get(path, params={"format": "table"}).status_code == 422
    assert client.get(path, params={"downsample": "mean"}).status_code == 422
    after = client.get(path, params={"format": "columns", "after": body["cursor"] - 3}).json()
    assert after["total"] == 3 and after["cursor"] == body["cursor"]
    with sessions() as session:  # the series read above (and kept by the server) grow by the new points
        recording.record_batch(session, run["id"], [Point(11, 1001, "step/train_loss", 0.5), Point(11, 1001, "new", 1.0)])
    grown = client.get(path, params={"format": "columns"}).json()
    assert grown["total"] == 1012 and grown["series"]["step/train_loss"]["step"][-2:] == [1000, 1001]
    assert grown["series"]["new"]["value"] == [1.0] and grown["cursor"] == body["cursor"] + 2

    with sessions() as session:
        recording.finish_run(session, run["id"], cancelled=True, test_accuracy=0.9, val_accuracy=0.9, best_epoch=7,
                           classes=["a"], confusion=[[1]], info={})
    first = client.get(path, params={"format": "columns", "max_points": 100})
    etag = first.headers["etag"]
    assert first.status_code == 200 and etag and first.headers["cache-control"] == "no-cache"
    again = client.get(path, params={"format": "columns", "max_points": 100}, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag and again.content == b""
    assert client.get(path, params={"format": "columns", "max_points": 100}).content == first.content  # cached
    other = client.get(path, params={"format": "columns"}, headers={"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["etag"] != etag  # another query, another tag

    assert client.post(f"/api/runs/{run['id']}/retry").status_code == 200  # the run starts over: the tag no longer matches
    retried = client.get(path, params={"format": "columns", "max_points": 100}, headers={"If-None-Match": etag})
    assert retried.status_code == 200 and retried.json()["series"] == {} and "etag" not in retried.headers
