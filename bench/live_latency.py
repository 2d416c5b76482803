"""Live latency: from the worker's commit of a point to its arrival at a Server-Sent Events
client, over 200 points.

A real uvicorn process serves the API on the embedded default (SQLite in a temporary
VAR_DIR); this process commits one epoch every 50 ms through the worker's write path
(`recording.record_points`) and, in a thread, reads the run's stream the way the browser does. Both
clocks are this machine's, so arrival − commit is the latency a user sees (plus drawing).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np

from backend.db import session_factory, utcnow
from backend.migrate import upgrade
from backend.runs import recording
from backend.runs.models import Run, RunState
from backend.settings import Settings

from .api_server import free_port, serve_api
from .rows import Row

POINTS = 200
INTERVAL = 0.05
TARGET_P95 = 1.0



def _listen(url: str, arrivals: dict[int, float], done: threading.Event) -> None:
    with httpx.stream("GET", url, timeout=None) as response:
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "metrics":
                now = time.time()
                for point in json.loads(line.split(":", 1)[1])["points"]:
                    arrivals.setdefault(point["epoch"], now)
            elif event == "end":
                break
            if len(arrivals) >= POINTS:
                break
    done.set()


def measure() -> list[Row]:
    with tempfile.TemporaryDirectory() as directory:
        settings = Settings(var_dir=Path(directory), database_url="", broker_url="")
        settings.make_dirs()
        upgrade(settings.database_url)
        sessions = session_factory(settings.database_url)
        with sessions() as session:
            run = Run(name="latency", spec={"epochs": POINTS}, dataset="digits", method="mle", fusion="add",
                      missing_modality="bottom", missing_rate=0.9, seed=0, state=RunState.running, created_at=utcnow(),
                      heartbeat_at=utcnow())  # alive: the server's reconcile step leaves it alone
            session.add(run)
            session.commit()
            run_id = run.id
        port = free_port()
        server = serve_api(settings, port)
        try:
            arrivals: dict[int, float] = {}
            done = threading.Event()
            listener = threading.Thread(target=_listen, args=(f"http://127.0.0.1:{port}/api/runs/{run_id}/stream",
                                                             arrivals, done), daemon=True)
            listener.start()
            time.sleep(1.0)
            commits: dict[int, float] = {}
            for epoch in range(1, POINTS + 1):
                with sessions() as session:
                    recording.record_points(session, run_id, epoch, {"val_accuracy": 0.5}, epochs_completed=epoch)
                commits[epoch] = time.time()
                time.sleep(INTERVAL)
            done.wait(timeout=30)
        finally:
            server.terminate()
            server.wait(10)
    latencies = np.array([arrivals[e] - commits[e] for e in commits if e in arrivals])
    missing = POINTS - len(latencies)
    p50, p95 = np.percentile(latencies, [50, 95]) if len(latencies) else (float("nan"),) * 2
    poll = settings.stream_poll_interval
    return [
        Row("live latency p50 (commit → SSE client)", float(p50), "s", note=f"database polled every {poll} s"),
        Row("live latency p95 (commit → SSE client)", float(p95), "s", target=f"<= {TARGET_P95:g}",
            met=bool(p95 <= TARGET_P95 and missing == 0),
            note=f"{len(latencies)} of {POINTS} points arrived" + ("" if not missing else " — some never arrived")),
    ]


def main() -> None:
    from .rows import print_table

    print_table(measure())


if __name__ == "__main__":
    main()
