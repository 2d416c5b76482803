"""Live runs from a script's own loop (missmod/live.py, backend/runs/live_runs.py), with a real
server process and real scripts: points land through the workers' ingestion while the script
runs, an exception fails the run with its error, a script killed with -9 leaves its run lost
once LIVE_RUN_TIMEOUT passes, test predictions on missmod's split are checked and paired, and
`missmod runs log` feeds a run from JSON lines on stdin."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from missmod.client import Client, Conflict, InvalidInput
from missmod.live import RunLost

from tests.support import ROOT, quick_to_reconcile, wait_for

SETTING = {"dataset": "digits", "missing_modality": "bottom", "missing_rate": 0.9, "seed": 0}


def script_env(url: str) -> dict[str, str]:
    return {**os.environ, "MISSMOD_URL": url, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def live_settings(embedded_settings):
    # A script silent for 3 s is lost; the reconcile step looks twice a second.
    return quick_to_reconcile(embedded_settings, live_run_timeout=3.0)


def test_a_live_run_logs_while_it_trains_and_finishes_paired(live_settings, start_server):
    url = start_server(live_settings)
    with Client(url) as client:
        with client.start_run(**SETTING, method_label="my_method", steps_per_epoch=100, epochs=2,
                              lr=0.01) as run:
            assert run.heartbeat_interval == pytest.approx(0.75)
            for step in range(1, 201):
                run.log(step=step, epoch=(step - 1) // 100 + 1, train_loss=1.0 / step, lr=0.01)
                if step % 100 == 0:
                    run.log(epoch=step // 100, val_accuracy=0.5 + step / 1000, val_loss=float("nan"))
            run.flush()
            seen = client.run(run.id)
            assert seen.state == "running" and seen.external and seen.epochs_completed == 2
            assert seen.environment["python"] and seen.environment["host"]
            assert [r.id for r in client.runs(state="running")] == [run.id]  # the runs list shows it live
            points = client.metrics(run)
            assert len(points) == 200 * 2 + 2 * 2
            assert {p.name for p in points} == {"step/train_loss", "step/lr", "val_accuracy", "val_loss"}
            assert [p.value for p in points if p.name == "val_loss"] == [None, None]  # diverged: null
            split = run.protocol()
            predicted = list(split.test_labels)
            predicted[:10] = [(label + 1) % 10 for label in predicted[:10]]  # ten mistakes
            ended = run.finish(test_predictions=predicted)
        assert ended.state == "succeeded" and ended.test_accuracy == pytest.approx(1 - 10 / len(predicted))
        assert ended.info["protocol"] == {"digest": split.digest, "verified": True, "test_predictions": True}
        assert client.predictions(ended).labels == split.test_labels
        # A second script on the same split, all right: McNemar against the first, 10 discordant pairs.
        with client.start_run(**SETTING, method_label="oracle") as second:
            second.finish(test_predictions=split.test_labels)
        pair = client.request("GET", f"/api/runs/{run.id}/paired", params={"against": second.id}).json()[0]
        assert pair["comparable"] and pair["discordant"] == [0, 10] and pair["p_value"] < 0.01


def test_bad_results_are_refused_and_an_exception_fails_the_run(live_settings, start_server):
    url = start_server(live_settings)
    with Client(url) as client:
        run = client.start_run(**SETTING, method_label="my_method")
        n = len(run.protocol().test_labels)
        with pytest.raises(InvalidInput) as refused:
            run.finish(test_predictions=[0] * (n - 1))
        assert refused.value.field == "test_predictions" and f"has {n}" in str(refused.value)
        with pytest.raises(InvalidInput) as refused:
            client.request("POST", f"/api/runs/{run.id}/live/finish",
                           json={"lease": run.lease, "test_predictions": [0] * n, "protocol_digest": "0" * 64})
        assert refused.value.field == "protocol_digest"
        with pytest.raises(Conflict):  # another lease cannot write into it
            client.request("POST", f"/api/runs/{run.id}/live/points",
                           json={"lease": "live:someone/else", "names": ["a"], "epoch": [1], "step": [1],
                                 "name": [0], "value": [1.0]})
        assert client.run(run.id).state == "running"  # nothing half-written

        with pytest.raises(ZeroDivisionError):
            with client.start_run(**SETTING, method_label="crashes") as crashing:
                crashing.log(step=1, epoch=1, train_loss=0.5)
                1 / 0
        failed = client.run(crashing.id)
        assert failed.state == "failed" and failed.error == "ZeroDivisionError: division by zero"
        assert len(client.metrics(failed)) == 1  # its points are kept
        with pytest.raises(Conflict):
            client.request("POST", f"/api/runs/{crashing.id}/live/heartbeat", json={"lease": crashing.lease})


KILLED_SCRIPT = textwrap.dedent("""
    import itertools, sys, time
    from missmod.client import Client
    run = Client().start_run(dataset="digits", method_label="killed", missing_modality="bottom", missing_rate=0.9)
    print(run.id, flush=True)
    for step in itertools.count(1):
        run.log(step=step, epoch=1, train_loss=1.0)
        time.sleep(0.01)
""")


def test_a_script_killed_with_minus_9_leaves_its_run_lost(live_settings, start_server):
    url = start_server(live_settings)
    script = subprocess.Popen([sys.executable, "-c", KILLED_SCRIPT], env=script_env(url), stdout=subprocess.PIPE,
                              text=True)
    try:
        run_id = int(script.stdout.readline())
        with Client(url) as client:
            wait_for(lambda: len(client.metrics(run_id)) > 20, 30, what="the script's points")
            # Longer than the timeout, alive: its heartbeats and points keep it running.
            wait_for(lambda: client.run(run_id).heartbeat_at and len(client.metrics(run_id)) > 300, 30)
            assert client.run(run_id).state == "running"
            script.send_signal(signal.SIGKILL)
            script.wait(10)
            lost = wait_for(lambda: (r := client.run(run_id)).state != "running" and r, 30, what="the run lost")
            assert lost.state == "failed" and lost.error.startswith("lost: the script logging it sent no heartbeat")
            assert "LIVE_RUN_TIMEOUT" in lost.error
    finally:
        script.kill()


def test_missmod_runs_log_reads_json_lines(live_settings, start_server):
    url = start_server(live_settings)
    with Client(url) as client:
        labels = client.protocol("digits", 0, 0.9).test_labels
        lines = [{"step": s, "epoch": 1, "train_loss": 1 / s} for s in range(1, 51)]
        lines += [{"epoch": 1, "val_accuracy": 0.8}, {"finish": {"test_predictions": labels}}]
        done = subprocess.run([sys.executable, "-m", "missmod", "runs", "log", "dataset=digits", "method=from_cli",
                               "missing_modality=bottom", "missing_rate=0.9", "--json"],
                              input="\n".join(json.dumps(line) for line in lines) + "\n", capture_output=True,
                              text=True, env=script_env(url), timeout=120)
        assert done.returncode == 0, done.stderr
        run = client.run(json.loads(done.stdout)["id"])
        assert run.state == "succeeded" and run.test_accuracy == 1.0 and run.method == "from_cli"
        assert len(client.metrics(run)) == 51
        bad = subprocess.run([sys.executable, "-m", "missmod", "runs", "log", "dataset=digits", "method=bad",
                              "missing_modality=bottom", "missing_rate=0.9", "--json"],
                             input='{"step": 1, "epoch": 1, "loss": 1}\nnot json\n', capture_output=True, text=True,
                             env=script_env(url), timeout=120)
        assert bad.returncode == 1
        failed = client.run(json.loads(bad.stdout)["id"])
        assert failed.state == "failed" and failed.error.startswith("line 2 of the input")


def test_a_lost_run_tells_the_script(live_settings, start_server):
    url = start_server(live_settings)
    with Client(url) as client:
        run = client.start_run(**SETTING, method_label="deleted")
        run.log(step=1, epoch=1, train_loss=1.0)
        run.flush()
        client.delete(run.id)
        run.log(step=2, epoch=1, train_loss=1.0)
        with pytest.raises(RunLost):
            run.flush(timeout=30)
        with pytest.raises(RunLost):
            run.log(step=3, epoch=1, train_loss=1.0)
