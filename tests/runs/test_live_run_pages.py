"""A script's own loop, logging live, seen in a real Chromium: per-step points on the run page
within a second of `log`; killed with -9, its run shown lost once LIVE_RUN_TIMEOUT passes; with
test predictions on missmod's split, its cell in a sweep's table compared with missmod's run by
McNemar. Real uvicorn, real scripts (subprocesses), SQLite; missmod's run of the sweep is ended
through the worker's own service calls (no training needed to compare)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from backend.db import session_factory
from backend.runs import recording
from missmod.client import Client
from training.protocol import ProtocolKey, protocol_for

from tests.runs.test_live_runs import script_env
from tests.support import as_worker, quick_to_reconcile, wait_for, wait_in_page

pytestmark = pytest.mark.browser

SETTING = {"dataset": "digits", "missing_modality": "bottom", "missing_rate": 0.9, "seed": 0}

# Logs one step each time a line arrives on stdin (its time printed back), finishes with test
# predictions on "finish", and waits to be killed on "hang".
SCRIPT = textwrap.dedent("""
    import json, sys, time
    from missmod.client import Client
    setting = json.loads(sys.argv[1])
    run = Client().start_run(**setting, steps_per_epoch=100, epochs=1)
    print(json.dumps({"id": run.id}), flush=True)
    step = 0
    for line in sys.stdin:
        command = line.strip()
        if command == "log":
            step += 1
            run.log(step=step, epoch=1, train_loss=1.0 / step)
            print(json.dumps({"logged": step, "at": time.time()}), flush=True)
        elif command == "finish":
            split = run.protocol()
            predicted = [(label + 1) % 10 if i < 5 else label for i, label in enumerate(split.test_labels)]
            print(json.dumps({"finished": run.finish(test_predictions=predicted).state}), flush=True)
            break
        elif command == "hang":
            while True:
                time.sleep(1)
""")


class Script:
    def __init__(self, url: str, setting: dict):
        self.process = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(setting)], env=script_env(url),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.id = self.read()["id"]

    def send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def read(self) -> dict:
        return json.loads(self.process.stdout.readline())


def step_points(page) -> int:
    return page.evaluate("""() => {
        const trace = (document.getElementById('chart-loss').data || []).find(t => t.name === 'step/train_loss');
        return trace ? trace.y.length : 0;
    }""")


def end_missmod_run(settings, run_id: int, wrong: int) -> None:
    """missmod's run of the sweep, ended as a worker ends it, `wrong` of its test groups wrong."""
    labels = protocol_for(ProtocolKey(**{k: SETTING[k] for k in ("dataset", "seed", "missing_rate")})).test_labels
    predicted = [(label + 1) % 10 if i < wrong else int(label) for i, label in enumerate(labels)]
    confusion = [[0] * 10 for _ in range(10)]
    for label, guess in zip(labels, predicted):
        confusion[label][guess] += 1
    accuracy = 1 - wrong / len(labels)
    with session_factory(settings.database_url)() as session:
        as_worker.start_run(session, run_id, "test")
        as_worker.record_epoch(session, run_id, 1, {"test_accuracy": accuracy, "val_accuracy": 0.5})
        recording.finish_run(session, run_id, cancelled=False, test_accuracy=accuracy, val_accuracy=0.5, best_epoch=1,
                             classes=[str(c) for c in range(10)], confusion=confusion, info={},
                             test_predictions=predicted, test_labels=labels.tolist())


def test_a_script_logging_live_is_seen_within_a_second_lost_when_killed_and_paired(
        page, embedded_settings, start_server, client_for):
    settings = quick_to_reconcile(embedded_settings, live_run_timeout=3.0)
    url = start_server(settings)
    api = client_for(settings)
    sweep = api.post("/api/sweeps", json={**SETTING, "method": ["zero_padding"], "fusion": "add", "seed": [0],
                                          "epochs": 1}).json()
    end_missmod_run(settings, sweep["run_ids"][0], wrong=40)

    script = Script(url, {**SETTING, "method_label": "my_method", "sweep": sweep["id"]})
    try:
        page.goto(f"{url}/runs/{script.id}")
        page.wait_for_selector("#run-page[data-history-loaded=true]")
        assert page.text_content("#run-state") == "running"
        assert "not recorded" not in page.text_content("#run-environment")  # the script's record
        latencies = []
        for step in range(1, 11):
            script.send("log")
            logged = script.read()
            wait_for(lambda: step_points(page) >= step, 10, interval=0.01, what=f"step {step} on the page")
            latencies.append(time.time() - logged["at"])
        print(f"log → on the run page: {', '.join(f'{s:.2f}' for s in latencies)} s")
        assert max(latencies) < 1.0, latencies
        assert page.js_errors == []

        script.send("finish")
        assert script.read() == {"finished": "succeeded"}
    finally:
        script.process.kill()

    page.goto(f"{url}/sweeps/{sweep['id']}")
    page.wait_for_selector("#sweep-page[data-drawn=true]")
    cell = page.evaluate("""() => {
        const row = [...document.querySelectorAll('#sweep-table tbody tr')]
            .find(tr => tr.querySelector('th').textContent.startsWith('my_method'));
        const line = row && row.querySelector('td .paired');
        return line ? {text: line.textContent, title: line.title} : null;
    }""")
    assert cell is not None and "pairing not verified" not in cell["text"]
    assert "McNemar p" in cell["title"], cell
    table = api.get(f"/api/sweeps/{sweep['id']}/table", params={"test": "samples"}).json()
    mine = next(row for row in table["rows"] if row["method"] == "my_method")["cells"][0]["paired"]
    assert mine["discordant"] == [0, 35] and mine["p_samples"] < 1e-6

    killed = Script(url, {**SETTING, "method_label": "killed"})
    try:
        killed.send("log")
        killed.read()
        page.goto(f"{url}/runs/{killed.id}")
        page.wait_for_selector("#run-page[data-history-loaded=true]")
        killed.send("hang")
        killed.process.send_signal(signal.SIGKILL)
        killed.process.wait(10)
        killed_at = time.monotonic()
        wait_in_page(page, "document.getElementById('run-state').textContent === 'failed'", timeout=30)
        took = time.monotonic() - killed_at
        print(f"killed -9 → shown lost after {took:.1f} s (LIVE_RUN_TIMEOUT 3 s, reconcile every 0.5 s)")
        assert took < 3.0 + 0.5 + 5  # the timeout, a reconcile pass, the page's stream
        assert page.text_content("#run-error-text").startswith("lost: the script logging it sent no heartbeat")
    finally:
        killed.process.kill()
