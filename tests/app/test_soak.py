"""The soak run (bench/soak.py) for 60 seconds: the API, two workers training short runs
continuously, 50 live-stream clients and a poller, all real processes on loopback. Nothing may
fail, no answer may be a 5xx, and every run's points and every stream's points are exact. The
memory figures are printed, not asserted (a minute is too short to tell a slope from warm-up:
`make soak` runs ten)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.soak


def test_a_minute_of_load_has_no_error_and_exact_points(tmp_path):
    figures = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--seconds", "60", "--workers", "2", "--sse-clients", "50",
         "--sample-every", "5", "--var-dir", str(tmp_path / "var"), "--json", str(figures)],
        cwd=ROOT, capture_output=True, text=True, timeout=480)
    print(done.stdout)
    assert figures.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(figures.read_text())
    assert (summary["http_5xx"], summary["http_unexpected_4xx"]) == (0, 0), summary
    assert summary["request_exceptions"] == {} and summary["stream_errors"] == {}, summary
    states = summary["run_states"]
    # Every run submitted is accounted for: it trained to success, or it was still queued when the
    # load stopped and the drain cancelled it (never one that had started).
    assert sum(states.values()) == summary["runs_submitted"] and set(states) <= {"succeeded", "cancelled"}, states
    assert summary["cancelled_after_start"] == []
    assert states.get("cancelled", 0) <= 2 * summary["workers"] + 1, states  # at most the backlog kept queued
    assert summary["inexact_runs"] == []  # every succeeded run: each expected point once, nothing else
    assert summary["workers_that_trained"] == 2  # the load reached both workers
    assert summary["clients_served"] == 50  # every live-stream client followed a run to its end
    assert summary["streams_exact"] == summary["streams_followed_to_end"] >= 50
    assert (summary["stream_points_lost"], summary["stream_points_duplicated"]) == (0, 0)
    assert summary["errors"] == 0 and done.returncode == 0
    assert {"api", "worker-1", "worker-2"} <= set(summary["rss"])
