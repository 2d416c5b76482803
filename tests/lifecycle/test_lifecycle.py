"""The life cycle every kind a worker executes shares — runs and dataset jobs — under failures,
on the real database (SQLite here; the fault tests drive PostgreSQL): who may take a row, what
a worker that lost its lease may still write, and what the reconcile step does with rows whose
worker died and with ids that never reached the broker. Each test runs for both kinds."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from backend.db import session_factory, utcnow
from backend.jobs import service as jobs
from backend.jobs.models import DatasetJob
from backend.lifecycle import lease
from backend.lifecycle.api import AlreadyFinished, enqueue_committed
from backend.lifecycle.models import Leased, State
from backend.migrate import upgrade
from backend.queue import WorkQueue
from backend.reconcile import reconcile
from backend.runs import service as runs
from backend.runs.models import Run
from backend.runs.schemas import RunCreate
from worker.lease_holder import DatabaseUnavailable, holder_is_dead_here
from tests.support import as_worker, queued_task_ids, wait_for

VALID_RUN = {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom",
             "missing_rate": 0.9, "epochs": 3, "seed": 0}
TIMEOUT = 30.0


@dataclass
class Kind:
    """One kind of leased row, and how a test makes one, writes its progress and reads it back."""

    model: type[Leased]
    create: Callable[[object, Session, WorkQueue], int]  # (API client, session, queue) → a queued row's id
    task_id: Callable[[int], str]  # its task id in the broker
    write_progress: Callable[[Session, int, int, str], None]  # (session, id, step, worker), under the lease
    progress: Callable[[Session, int], int]  # the last step written
    cancel: Callable[[Session, int], object]


RUN = Kind(
    Run,
    create=lambda client, session, queue: client.post("/api/runs", json=VALID_RUN).json()["id"],
    task_id=str,
    write_progress=lambda session, run_id, step, worker: as_worker.record_epoch(
        session, run_id, step, {"val_accuracy": step / 10}, worker),
    progress=lambda session, run_id: session.get(Run, run_id).epochs_completed,
    cancel=runs.request_cancel,
)
JOB = Kind(
    DatasetJob,
    # No dataset is needed to test the life cycle: no worker runs the job here.
    create=lambda client, session, queue: jobs.create_job(session, "preprocess", "ravdess", {}, queue).id,
    task_id=lambda job_id: f"job-{job_id}",
    write_progress=lambda session, job_id, step, worker: lease.record(
        session, DatasetJob, job_id, worker, done=step, total=10),
    progress=lambda session, job_id: session.get(DatasetJob, job_id).done,
    cancel=jobs.request_cancel,
)


@pytest.fixture(params=[RUN, JOB], ids=["run", "dataset job"])
def kind(request) -> Kind:
    return request.param


@pytest.fixture
def settings(embedded_settings):
    return embedded_settings


@pytest.fixture
def sessions(settings):
    return session_factory(settings.database_url)


@pytest.fixture
def queue(settings):
    queue = WorkQueue(settings)
    yield queue
    queue.close()


@pytest.fixture
def client(client_for, settings):
    return client_for(settings)


@pytest.fixture
def new(kind, client, sessions, queue) -> Callable[[], int]:
    """Makes a queued row of the kind, its id sent to the broker."""
    def make() -> int:
        with sessions() as session:
            return kind.create(client, session, queue)

    return make


def drain(settings) -> None:
    for path in (settings.broker_dir / "queue").iterdir():
        path.unlink()


def age_heartbeat(sessions, kind: Kind, row_id: int, seconds: float) -> None:
    with sessions() as session:
        session.execute(update(kind.model).where(kind.model.id == row_id)
                        .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))
        session.commit()


def get(sessions, kind: Kind, row_id: int) -> Leased:
    with sessions() as session:
        return session.get(kind.model, row_id)


def claim(sessions, kind: Kind, row_id: int, worker: str, **options) -> lease.Claim:
    with sessions() as session:
        return lease.claim(session, kind.model, row_id, worker, heartbeat_timeout=TIMEOUT, max_retries=2, **options)


def reconcile_now(sessions, kind: Kind, queue):
    with sessions() as session:
        return reconcile(session, queue, heartbeat_timeout=TIMEOUT, max_retries=2)[kind.model]


# --- claims and the lease -----------------------------------------------------------------


def test_a_row_with_a_live_heartbeat_is_not_taken_twice(kind, new, sessions):
    row_id = new()
    assert claim(sessions, kind, row_id, "a@host/1").row is not None
    second = claim(sessions, kind, row_id, "b@host/2")
    assert second.row is None and "held by a live worker" in second.reason
    row = get(sessions, kind, row_id)
    assert row.worker == "a@host/1" and row.attempts == 1 and row.worker_losses == 0


def test_a_row_whose_heartbeat_stopped_is_taken_and_counted_as_a_loss(kind, new, sessions):
    row_id = new()
    claim(sessions, kind, row_id, "a@host/1")
    age_heartbeat(sessions, kind, row_id, TIMEOUT + 1)
    taken = claim(sessions, kind, row_id, "b@host/2")
    assert taken.row is not None and "dead worker" in taken.reason
    row = get(sessions, kind, row_id)
    assert (row.worker, row.attempts, row.worker_losses, row.state) == ("b@host/2", 2, 1, "running")


def test_the_old_holder_can_write_nothing_once_its_row_was_taken(kind, new, sessions):
    row_id = new()
    claim(sessions, kind, row_id, "a@host/1")
    with sessions() as session:
        kind.write_progress(session, row_id, 1, "a@host/1")
    age_heartbeat(sessions, kind, row_id, TIMEOUT + 1)
    claim(sessions, kind, row_id, "b@host/2")
    with sessions() as session:
        with pytest.raises(lease.LeaseLost):
            kind.write_progress(session, row_id, 2, "a@host/1")
        assert not lease.beat(session, kind.model, row_id, "a@host/1")
        with pytest.raises(lease.LeaseLost):
            lease.finish(session, kind.model, row_id, "a@host/1", cancelled=False)
        lease.fail(session, kind.model, row_id, "late failure", worker="a@host/1")  # ignored: not the holder
        assert not lease.release(session, kind.model, row_id, "a@host/1")
        assert kind.progress(session, row_id) == 1
    row = get(sessions, kind, row_id)
    assert row.state == "running" and row.worker == "b@host/2" and row.error is None


def test_two_claims_from_the_same_stale_read_cannot_both_win(kind, new, sessions):
    row_id = new()
    with sessions() as first, sessions() as second:
        # Both read "queued, 0 attempts" (kept referenced: the session's identity map holds rows weakly).
        read = first.get(kind.model, row_id), second.get(kind.model, row_id)  # noqa: F841
        claims = [lease.claim(s, kind.model, row_id, w) for s, w in ((first, "a@h/1"), (second, "b@h/2"))]
    assert [c.row is not None for c in claims] == [True, False] and "another worker" in claims[1].reason


def test_a_stale_row_cannot_be_taken_twice(kind, new, sessions):
    """Two workers both see the holder dead (its heartbeat stale): only one takes the row over."""
    row_id = new()
    claim(sessions, kind, row_id, "a@host/1")
    age_heartbeat(sessions, kind, row_id, TIMEOUT + 1)
    with sessions() as first, sessions() as second:
        read = first.get(kind.model, row_id), second.get(kind.model, row_id)  # noqa: F841  (both: running, stale)
        claims = [lease.claim(s, kind.model, row_id, w, heartbeat_timeout=TIMEOUT)
                  for s, w in ((first, "b@h/2"), (second, "c@h/3"))]
    assert [c.row is not None for c in claims] == [True, False] and "another worker" in claims[1].reason
    row = get(sessions, kind, row_id)
    assert (row.worker, row.attempts, row.worker_losses) == ("b@h/2", 2, 1)


def test_a_row_held_by_a_vanished_process_of_the_same_node_is_taken_at_once(kind, new, sessions):
    row_id = new()
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    claim(sessions, kind, row_id, f"node-1@host/{gone}")
    me = f"node-1@host/{os.getpid()}"
    is_dead = holder_is_dead_here(me)
    assert is_dead(f"node-1@host/{gone}") and not is_dead(f"node-2@host/{gone}")
    assert not is_dead(f"node-1@host/{os.getppid()}")  # alive
    taken = claim(sessions, kind, row_id, me, holder_is_dead=is_dead)  # heartbeat still fresh
    assert taken.row is not None and get(sessions, kind, row_id).worker_losses == 1


def test_a_cancel_is_read_back_by_the_holders_next_write(kind, new, sessions):
    row_id = new()
    claim(sessions, kind, row_id, "a@host/1")
    with sessions() as session:
        assert not lease.record(session, kind.model, row_id, "a@host/1")
        assert kind.cancel(session, row_id).state == "running"  # running: flagged, not ended
        assert lease.record(session, kind.model, row_id, "a@host/1")
        lease.finish(session, kind.model, row_id, "a@host/1", cancelled=True)
        with pytest.raises(AlreadyFinished):
            kind.cancel(session, row_id)
    assert get(sessions, kind, row_id).state == "cancelled"


def test_a_worker_shutting_down_gives_its_row_back_without_counting_a_loss(kind, new, sessions):
    row_id = new()
    claim(sessions, kind, row_id, "a@host/1")
    with sessions() as session:
        assert not lease.release(session, kind.model, row_id, "b@host/2")
        assert lease.release(session, kind.model, row_id, "a@host/1")
    row = get(sessions, kind, row_id)
    assert (row.state, row.worker, row.worker_losses) == ("queued", None, 0) and row.awaiting_broker_since
    assert claim(sessions, kind, row_id, "b@host/2").row is not None


def test_a_row_id_met_while_the_database_is_down_is_not_dropped(kind, tmp_path):
    """The worker cannot claim the row: it says so (the task then gives the id back to the
    broker) instead of acknowledging an id it did nothing with."""
    from backend.settings import Settings
    from worker.dataset_jobs import execute_job
    from worker.executor import execute_run

    execute = execute_run if kind is RUN else execute_job
    unreachable = Settings(var_dir=tmp_path / "var", database_url=f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    with pytest.raises(DatabaseUnavailable):
        execute(1, unreachable, worker="w@host/1")


# --- the reconcile step -------------------------------------------------------------------


def test_reconcile_queues_again_a_row_whose_worker_died_and_sends_its_id(kind, new, sessions, queue, settings):
    row_id = new()
    claim(sessions, kind, row_id, "a@host/1")
    drain(settings)
    report = reconcile_now(sessions, kind, queue)
    assert not report and get(sessions, kind, row_id).state == "running"  # fresh heartbeat: left alone
    age_heartbeat(sessions, kind, row_id, TIMEOUT + 1)
    report = reconcile_now(sessions, kind, queue)
    assert report.requeued == [row_id] and report.sent == [row_id]
    row = get(sessions, kind, row_id)
    assert (row.state, row.worker, row.worker_losses, row.awaiting_broker_since) == ("queued", None, 1, None)
    assert queued_task_ids(settings) == [kind.task_id(row_id)]
    assert not reconcile_now(sessions, kind, queue)  # once: nothing more to do
    assert claim(sessions, kind, row_id, "b@host/2").row is not None


def test_reconcile_fails_a_row_whose_worker_keeps_dying_with_the_reason(kind, new, sessions, queue):
    row_id = new()
    for loss in range(3):
        assert claim(sessions, kind, row_id, f"w@host/{loss}").row is not None
        age_heartbeat(sessions, kind, row_id, TIMEOUT + 1)
        report = reconcile_now(sessions, kind, queue)
    assert report.failed == [row_id]
    row = get(sessions, kind, row_id)
    assert row.state == "failed" and row.worker_losses == 3 and row.finished_at
    assert "stopped responding 3 times" in row.error and "w@host/2" in row.error and "RUN_MAX_RETRIES" in row.error


def test_reconcile_ends_a_cancelled_row_whose_worker_died_as_cancelled(kind, new, sessions, queue):
    row_id = new()
    claim(sessions, kind, row_id, "a@host/1")
    with sessions() as session:
        kind.cancel(session, row_id)
    age_heartbeat(sessions, kind, row_id, TIMEOUT + 1)
    assert reconcile_now(sessions, kind, queue).cancelled == [row_id]
    assert get(sessions, kind, row_id).state == "cancelled"


def test_an_id_that_never_reached_the_broker_is_sent_by_reconcile(kind, new, sessions, queue, settings):
    """The API committed the row and died before sending its id (the outbox gap)."""
    row_id = new()
    drain(settings)
    with sessions() as session:
        session.execute(update(kind.model).where(kind.model.id == row_id).values(awaiting_broker_since=utcnow()))
        session.commit()
    assert reconcile_now(sessions, kind, queue).sent == []  # too recent
    with sessions() as session:
        session.execute(update(kind.model).where(kind.model.id == row_id)
                        .values(awaiting_broker_since=utcnow() - timedelta(seconds=TIMEOUT + 1)))
        session.commit()
    assert reconcile_now(sessions, kind, queue).sent == [row_id]
    assert queued_task_ids(settings) == [kind.task_id(row_id)]
    assert get(sessions, kind, row_id).awaiting_broker_since is None


def test_a_sent_row_is_not_awaiting_the_broker(kind, new, sessions, settings):
    row_id = new()
    assert get(sessions, kind, row_id).awaiting_broker_since is None
    assert queued_task_ids(settings) == [kind.task_id(row_id)]


def test_a_row_that_cannot_be_sent_stays_queued_awaiting_the_broker_until_reconcile_sends_it(
        kind, sessions, settings, queue):
    """The broker refuses the id: the row is not failed (nothing lost, no failed trail) but stays
    queued with why, and the next reconcile pass sends it — at once, not after HEARTBEAT_TIMEOUT."""
    def refuse(_id: int) -> None:
        raise ConnectionError("broker down at 10.0.0.5")

    # No API process here: its own reconcile passes (at start-up, then every RECONCILE_INTERVAL)
    # would send the row too, racing the pass this test makes (1 run in 9 failed).
    upgrade(settings.database_url)
    with sessions() as session:
        row_id = (runs.create_run(session, RunCreate(**VALID_RUN), queue).id if kind.model is Run
                  else kind.create(None, session, queue))
    before = queued_task_ids(settings)
    with sessions() as session:
        row = session.get(kind.model, row_id)
        row.state, row.awaiting_broker_since = State.queued, utcnow()
        session.commit()
        assert enqueue_committed(session, kind.model, [row], refuse) is False
    row = get(sessions, kind, row_id)
    assert (row.state, row.error, row.awaiting_broker) == ("queued", None, True) and row.awaiting_broker_since
    assert "broker" in row.broker_error and "10.0.0.5" not in row.broker_error  # the address stays in the log
    assert reconcile_now(sessions, kind, queue).sent == [row_id]
    assert queued_task_ids(settings) == before + [kind.task_id(row_id)]
    row = get(sessions, kind, row_id)
    assert (row.awaiting_broker_since, row.broker_error, row.awaiting_broker) == (None, None, False)


def test_a_bug_in_sending_is_raised_not_saved_as_awaiting_the_broker(kind, new, sessions, settings):
    """Only a broker outage leaves a row awaiting the broker: a programming error (here a
    TypeError, like a send called with the wrong arguments) surfaces instead of being hidden."""
    def broken(_id: int) -> None:
        raise TypeError("send_run() takes 2 positional arguments but 3 were given")

    row_id = new()
    with sessions() as session:
        row = session.get(kind.model, row_id)
        with pytest.raises(TypeError):
            enqueue_committed(session, kind.model, [row], broken)
    assert get(sessions, kind, row_id).broker_error is None


def test_the_api_reconciles_at_start_up(kind, new, settings, client_for, sessions):
    row_id = new()
    claim(sessions, kind, row_id, "a@host/1")
    age_heartbeat(sessions, kind, row_id, settings.heartbeat_timeout + 1)
    client_for(settings)  # a new API process starting
    wait_for(lambda: get(sessions, kind, row_id).state == State.queued, 10, what="the start-up reconcile")
    assert get(sessions, kind, row_id).worker_losses == 1
