"""Notifications: a real HTTP server on loopback stands in for Slack; the webhook hears of a failed
run and of a finished sweep (once), retried with backoff when the hook fails."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import update

from backend.db import session_factory
from backend.notify import Webhook
from backend.runs.models import Run
from missmod.client import Client

from tests.support import wait_for


class Hook:
    """Answers `failures` times with 500, then 204; records every body it was sent."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.attempts: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.attempts.append(body)
                failing = len(hook.attempts) <= hook.failures
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self, event: str) -> list[dict]:
        return [body for body in self.attempts[self.failures:] if body["event"] == event]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    made = []

    def make(failures: int = 0) -> Hook:
        made.append(Hook(failures))
        return made[-1]

    yield make
    for h in made:
        h.close()


def test_a_failing_hook_is_retried_with_backoff_and_then_given_up(hook):
    flaky = hook(failures=2)
    webhook = Webhook(flaky.url, attempts=4, first_delay=0.05)
    webhook.send({"event": "run.failed", "text": "missmod: run 1 failed"})  # returns at once
    assert webhook.flush(timeout=30)
    assert len(flaky.attempts) == 3 and flaky.delivered("run.failed")[0]["text"] == "missmod: run 1 failed"

    down = hook(failures=100)
    webhook = Webhook(down.url, attempts=3, first_delay=0.05)
    webhook.send({"event": "sweep.finished", "text": "x"})
    assert webhook.flush(timeout=30)  # given up, not stuck
    assert len(down.attempts) == 3


def test_a_failed_run_and_a_finished_sweep_are_announced(embedded_settings, start_server, start_worker, hook):
    receiver = hook(failures=1)  # the first call fails: the event still arrives, retried
    settings = embedded_settings.model_copy(update={"webhook_url": receiver.url})
    base = start_server(settings)
    client = Client(base)
    sweep = client.sweep({"dataset": "digits", "method": "mle", "missing_modality": "bottom",
                          "missing_rate": [0.5, 0.9], "epochs": 1})
    broken = sweep.run_ids[1]
    # A spec that no longer fits its dataset when the worker reads it: the run fails in training.
    with session_factory(settings.database_url)() as session:
        run = session.get(Run, broken)
        session.execute(update(Run).where(Run.id == broken)
                        .values(spec={**run.spec, "missing_modality": "left"}))
        session.commit()
    worker = start_worker(settings)

    def tasks_ended(n: int):  # each run's task sends its events before it returns (notify.py)
        return lambda: worker.log().count("] succeeded in") == n

    wait_for(lambda: receiver.delivered("sweep.finished"), 180, what="the sweep-finished notification")
    # Once: counted when both runs' tasks are over, when a second announcement would have been sent.
    wait_for(tasks_ended(2), 60, what="both runs' tasks to end")
    failed = receiver.delivered("run.failed")
    assert [body["run"]["id"] for body in failed] == [broken]
    assert failed[0]["text"].startswith(f"missmod: run {broken} (") and "no modality 'left'" in failed[0]["text"]
    finished = receiver.delivered("sweep.finished")
    assert len(finished) == 1 and finished[0]["sweep"]["id"] == sweep.id
    assert finished[0]["text"] == f"missmod: sweep {sweep.id} ({sweep.name}) finished: 1 succeeded, 1 failed"
    assert client.get_sweep(sweep).finished_at is not None

    # retried, the sweep is unfinished again; when it ends again it is announced again
    client.retry(broken)
    assert client.get_sweep(sweep).finished_at is None
    wait_for(lambda: len(receiver.delivered("sweep.finished")) == 2, 180, what="the second notification")
    wait_for(tasks_ended(3), 60, what="the retried run's task to end")
    # With the worker and the API stopped, nothing more can come: exactly one more of each.
    worker.stop()
    base.process.stop()
    assert len(receiver.delivered("sweep.finished")) == 2
    assert len(receiver.delivered("run.failed")) == 2  # it failed again, for the same reason
