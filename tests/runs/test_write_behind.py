"""A run's writes behind its training (worker/write_behind.py), with the real executor, SQLite and
the filesystem store, in this process: the training goes on while its writes wait for the
database, every point reported before a checkpoint is committed before the checkpoint is
written, and a write that fails ends the run as it did when the loop made it itself."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from sqlalchemy import func, select

from backend.db import session_factory
from backend.runs.models import MetricPoint, Run
from backend.runs.schemas import RunCreate
from backend.runs.service import new_run
from bench.points import assert_exactly_once, run_expected_points

from tests.runs.test_end_to_end import SPEC
from tests.support import wait_for

EPOCH_METRICS = 4  # train_loss, val_loss, val_accuracy, test_accuracy


def queued_run(settings, **spec) -> int:
    with session_factory(settings.database_url)() as session:
        run = new_run(RunCreate(**{**SPEC, **spec}))
        session.add(run)
        session.commit()
        return run.id


def epoch_points_committed(settings, run_id: int, up_to_epoch: int) -> int:
    """Read by a connection of its own: what another process would find."""
    with session_factory(settings.database_url)() as session:
        return session.scalar(select(func.count()).select_from(MetricPoint).where(
            MetricPoint.run_id == run_id, MetricPoint.epoch <= up_to_epoch, MetricPoint.epoch > 0,
            ~MetricPoint.name.startswith("step/")))


def run_json(settings, run_id: int) -> dict:
    from backend.runs.schemas import RunOut

    with session_factory(settings.database_url)() as session:
        return RunOut.model_validate(session.get(Run, run_id)).model_dump(mode="json")


def all_points(settings, run_id: int) -> list[dict]:
    with session_factory(settings.database_url)() as session:
        rows = session.execute(select(MetricPoint.epoch, MetricPoint.step, MetricPoint.name)
                               .where(MetricPoint.run_id == run_id)).all()
    return [{"epoch": e, "step": s, "name": n} for e, s, n in rows]


def test_every_point_before_a_checkpoint_is_committed_when_it_is_written(embedded_settings, monkeypatch):
    import training.train
    from worker.executor import execute_run

    settings = embedded_settings.model_copy(update={"checkpoint_interval": 0.0})  # one after every epoch
    run_id = queued_run(settings, epochs=5)
    written = training.train.save_checkpoint
    found: list[tuple[int, int]] = []

    def checking(path, state):
        found.append((state["epoch"], epoch_points_committed(settings, run_id, state["epoch"])))
        written(path, state)

    monkeypatch.setattr(training.train, "save_checkpoint", checking)
    assert str(execute_run(run_id, settings, worker="test-worker/1")) == "succeeded"
    assert [epoch for epoch, _ in found] == [0, 1, 2, 3, 4, 5]
    assert all(committed == EPOCH_METRICS * epoch for epoch, committed in found), found


def test_training_goes_on_while_the_database_is_locked_and_every_point_lands_once(embedded_settings, monkeypatch):
    """Another connection holds SQLite's write lock (as a long write by the API would): the
    run's writes wait for it, its epochs do not."""
    import worker.executor
    from worker.executor import execute_run

    run_id = queued_run(embedded_settings, epochs=30)
    reported: list[int] = []
    on_epoch_end = worker.executor.DatabaseRecorder.on_epoch_end

    def counting(self, epoch, metrics):
        on_epoch_end(self, epoch, metrics)
        reported.append(epoch)

    monkeypatch.setattr(worker.executor.DatabaseRecorder, "on_epoch_end", counting)
    outcome: list[object] = []
    training = threading.Thread(target=lambda: outcome.append(execute_run(run_id, embedded_settings,
                                                                          worker="test-worker/1")))
    training.start()
    lock = sqlite3.connect(embedded_settings.database_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        wait_for(lambda: epoch_points_committed(embedded_settings, run_id, 2) == 2 * EPOCH_METRICS, 120,
                 interval=0.05, what="two epochs committed")
        lock.execute("BEGIN IMMEDIATE")  # the write lock, until ROLLBACK
        locked_at = len(reported)
        wait_for(lambda: len(reported) >= locked_at + 3, 25, interval=0.05,
                 what="three more epochs trained while the database is locked")
        assert epoch_points_committed(embedded_settings, run_id, 30) <= (locked_at + 1) * EPOCH_METRICS
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    training.join(300)
    assert [str(o) for o in outcome] == ["succeeded"]
    run = run_json(embedded_settings, run_id)
    assert run["epochs_completed"] == 30
    assert_exactly_once(all_points(embedded_settings, run_id), run_expected_points(run))


def test_a_write_that_finds_the_run_given_away_stops_it_mid_epoch(embedded_settings, monkeypatch):
    """As when the loop wrote itself: the next step raises, nothing more is written."""
    import worker.executor
    from worker.executor import execute_run

    run_id = queued_run(embedded_settings, epochs=200)
    on_epoch_end = worker.executor.DatabaseRecorder.on_epoch_end

    def giving_it_away(self, epoch, metrics):
        if epoch == 2:
            with session_factory(embedded_settings.database_url)() as session:
                session.get(Run, run_id).worker = "another-worker/2"
                session.commit()
        on_epoch_end(self, epoch, metrics)

    monkeypatch.setattr(worker.executor.DatabaseRecorder, "on_epoch_end", giving_it_away)
    assert str(execute_run(run_id, embedded_settings, worker="test-worker/1")) == "lease lost"
    run = run_json(embedded_settings, run_id)
    assert run["state"] == "running" and run["epochs_completed"] == 1  # epoch 2's points were refused


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
