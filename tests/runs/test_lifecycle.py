"""The run life cycle under failures, on the real database (SQLite here; the fault tests drive
PostgreSQL): who may start a run, what a worker that lost its run may still write, and what the
reconcile step does with runs whose worker died and ids that never reached the broker."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from sqlalchemy import update

from backend.db import session_factory, utcnow
from backend.queue import RunQueue
from backend.runs import service
from backend.runs.models import Run, RunState
from worker.executor import holder_is_dead_here
from tests.support import queued_run_ids

VALID = {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom",
         "missing_rate": 0.9, "epochs": 3, "seed": 0}
TIMEOUT = 30.0


@pytest.fixture
def settings(embedded_settings):
    return embedded_settings


@pytest.fixture
def sessions(settings):
    return session_factory(settings.database_url)


@pytest.fixture
def queue(settings):
    queue = RunQueue(settings)
    yield queue
    queue.close()


@pytest.fixture
def client(client_for, settings):
    return client_for(settings)


def drain(settings) -> None:
    for path in (settings.broker_dir / "queue").iterdir():
        path.unlink()


def new_run(client) -> int:
    return client.post("/api/runs", json=VALID).json()["id"]


def age_heartbeat(sessions, run_id: int, seconds: float) -> None:
    with sessions() as session:
        session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))
        session.commit()


def get(sessions, run_id: int) -> Run:
    with sessions() as session:
        return session.get(Run, run_id)


def claim(sessions, run_id: int, worker: str, **options):
    with sessions() as session:
        return service.claim_run(session, run_id, worker, heartbeat_timeout=TIMEOUT, max_retries=2, **options)


def test_a_running_run_with_a_live_heartbeat_is_not_taken_twice(client, sessions):
    run_id = new_run(client)
    assert claim(sessions, run_id, "a@host/1").run is not None
    second = claim(sessions, run_id, "b@host/2")
    assert second.run is None and "held by a live worker" in second.reason
    run = get(sessions, run_id)
    assert run.worker == "a@host/1" and run.attempts == 1 and run.worker_losses == 0


def test_a_run_whose_heartbeat_stopped_is_taken_and_counted_as_a_loss(client, sessions):
    run_id = new_run(client)
    claim(sessions, run_id, "a@host/1")
    age_heartbeat(sessions, run_id, TIMEOUT + 1)
    taken = claim(sessions, run_id, "b@host/2")
    assert taken.run is not None and "dead worker" in taken.reason
    run = get(sessions, run_id)
    assert (run.worker, run.attempts, run.worker_losses, run.state) == ("b@host/2", 2, 1, "running")


def test_the_old_holder_can_write_nothing_once_its_run_was_taken(client, sessions):
    run_id = new_run(client)
    claim(sessions, run_id, "a@host/1")
    with sessions() as session:
        service.record_epoch(session, run_id, 1, {"val_accuracy": 0.5}, "a@host/1")
    age_heartbeat(sessions, run_id, TIMEOUT + 1)
    claim(sessions, run_id, "b@host/2")
    with sessions() as session:
        with pytest.raises(service.LeaseLost):
            service.record_epoch(session, run_id, 2, {"val_accuracy": 0.9}, "a@host/1")
        assert not service.beat(session, run_id, "a@host/1")
        with pytest.raises(service.LeaseLost):
            service.finish_run(session, run_id, cancelled=False, test_accuracy=0.9, val_accuracy=0.9, best_epoch=2,
                               classes=[], confusion=None, info={}, worker="a@host/1")
        service.fail_run(session, run_id, "late failure", worker="a@host/1")  # ignored: not the holder
    points = client.get(f"/api/runs/{run_id}/metrics").json()["points"]
    assert [(p["epoch"], p["value"]) for p in points] == [(1, 0.5)]
    run = get(sessions, run_id)
    assert run.state == "running" and run.worker == "b@host/2" and run.error is None


def test_two_claims_from_the_same_stale_read_cannot_both_win(client, sessions):
    run_id = new_run(client)
    with sessions() as first, sessions() as second:
        first.get(Run, run_id), second.get(Run, run_id)  # both read "queued, 0 attempts"
        wins = [service.claim_run(s, run_id, w).run is not None for s, w in ((first, "a@h/1"), (second, "b@h/2"))]
    assert wins == [True, False]


def test_a_run_held_by_a_vanished_process_of_the_same_node_is_taken_at_once(client, sessions):
    run_id = new_run(client)
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    claim(sessions, run_id, f"node-1@host/{gone}")
    me = f"node-1@host/{os.getpid()}"
    is_dead = holder_is_dead_here(me)
    assert is_dead(f"node-1@host/{gone}") and not is_dead(f"node-2@host/{gone}")
    assert not is_dead(f"node-1@host/{os.getppid()}")  # alive
    taken = claim(sessions, run_id, me, holder_is_dead=is_dead)  # heartbeat still fresh
    assert taken.run is not None and get(sessions, run_id).worker_losses == 1


def test_reconcile_queues_again_a_run_whose_worker_died_and_sends_its_id(client, sessions, queue, settings):
    run_id = new_run(client)
    claim(sessions, run_id, "a@host/1")
    drain(settings)
    with sessions() as session:
        report = service.reconcile(session, queue, heartbeat_timeout=TIMEOUT, max_retries=2)
    assert not report and get(sessions, run_id).state == "running"  # fresh heartbeat: left alone
    age_heartbeat(sessions, run_id, TIMEOUT + 1)
    with sessions() as session:
        report = service.reconcile(session, queue, heartbeat_timeout=TIMEOUT, max_retries=2)
    assert report.requeued == [run_id] and report.sent == [run_id]
    run = get(sessions, run_id)
    assert (run.state, run.worker, run.worker_losses, run.awaiting_broker_since) == ("queued", None, 1, None)
    assert queued_run_ids(settings) == [run_id]
    assert claim(sessions, run_id, "b@host/2").run is not None


def test_reconcile_fails_a_run_whose_worker_keeps_dying_with_the_reason(client, sessions, queue):
    run_id = new_run(client)
    for loss in range(3):
        assert claim(sessions, run_id, f"w@host/{loss}").run is not None
        age_heartbeat(sessions, run_id, TIMEOUT + 1)
        with sessions() as session:
            report = service.reconcile(session, queue, heartbeat_timeout=TIMEOUT, max_retries=2)
    assert report.failed == [run_id]
    run = get(sessions, run_id)
    assert run.state == "failed" and run.worker_losses == 3 and run.finished_at
    assert "stopped responding 3 times" in run.error and "w@host/2" in run.error and "RUN_MAX_RETRIES" in run.error


def test_reconcile_ends_a_cancelled_run_whose_worker_died_as_cancelled(client, sessions, queue):
    run_id = new_run(client)
    claim(sessions, run_id, "a@host/1")
    client.post(f"/api/runs/{run_id}/cancel")
    age_heartbeat(sessions, run_id, TIMEOUT + 1)
    with sessions() as session:
        assert service.reconcile(session, queue, heartbeat_timeout=TIMEOUT, max_retries=2).cancelled == [run_id]
    assert get(sessions, run_id).state == "cancelled"


def test_an_id_that_never_reached_the_broker_is_sent_by_reconcile(client, sessions, queue, settings):
    """The API committed the run and died before sending its id (the outbox gap)."""
    run_id = new_run(client)
    drain(settings)
    with sessions() as session:
        session.execute(update(Run).where(Run.id == run_id).values(awaiting_broker_since=utcnow()))
        session.commit()
        assert service.reconcile(session, queue, heartbeat_timeout=TIMEOUT, max_retries=2).sent == []  # too recent
        session.execute(update(Run).where(Run.id == run_id)
                        .values(awaiting_broker_since=utcnow() - timedelta(seconds=TIMEOUT + 1)))
        session.commit()
        assert service.reconcile(session, queue, heartbeat_timeout=TIMEOUT, max_retries=2).sent == [run_id]
    assert queued_run_ids(settings) == [run_id] and get(sessions, run_id).awaiting_broker_since is None


def test_a_sent_run_is_not_awaiting_the_broker(client, sessions, settings):
    run_id = new_run(client)
    assert get(sessions, run_id).awaiting_broker_since is None and queued_run_ids(settings) == [run_id]


def test_a_worker_shutting_down_gives_its_run_back_without_counting_a_loss(client, sessions):
    run_id = new_run(client)
    claim(sessions, run_id, "a@host/1")
    with sessions() as session:
        assert not service.release_run(session, run_id, "b@host/2")
        assert service.release_run(session, run_id, "a@host/1")
    run = get(sessions, run_id)
    assert (run.state, run.worker, run.worker_losses) == ("queued", None, 0) and run.awaiting_broker_since
    assert claim(sessions, run_id, "b@host/2").run is not None


def test_the_api_reconciles_at_start_up(settings, client_for, sessions):
    first = client_for(settings)
    run_id = new_run(first)
    claim(sessions, run_id, "a@host/1")
    age_heartbeat(sessions, run_id, settings.heartbeat_timeout + 1)
    client_for(settings)  # a new API process starting
    from tests.support import wait_for

    wait_for(lambda: get(sessions, run_id).state == RunState.queued, 10, what="the start-up reconcile")
    assert get(sessions, run_id).worker_losses == 1


def test_a_run_id_met_while_the_database_is_down_is_not_dropped(tmp_path):
    """The worker cannot claim the run: it says so (the task then gives the id back to the
    broker) instead of acknowledging an id it did nothing with."""
    from backend.settings import Settings
    from worker.executor import DatabaseUnavailable, execute_run

    unreachable = Settings(var_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    with pytest.raises(DatabaseUnavailable):
        execute_run(1, unreachable, worker="w@host/1")
