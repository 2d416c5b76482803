"""Prediction through the API (docs/predict.md): a real uvicorn server and a real Celery worker on
the embedded default (SQLite and the folder broker, in a temporary VAR_DIR), a digits `mle` run
trained through them, then

- predictions per second for one request of 1,000 digits samples (x and y), best of 3;
- the latency of single-sample requests (x alone: eq. 5), p50 and p95 over 40 requests, from
  the client's send to its answer — a fresh worker process and a bundle read each time.

The load average of the machine is in the note: on a shared host the figures move with it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np

from backend.migrate import upgrade
from backend.settings import Settings

from .api_server import ROOT, free_port, serve_api
from .rows import Row

SINGLE_REQUESTS = 40
BATCH = 1000


def _worker(settings: Settings, log: Path) -> subprocess.Popen:
    env = {**os.environ, "VAR_DIR": str(settings.var_dir), "DATABASE_URL": "", "BROKER_URL": "",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel",
                               "INFO", "--without-gossip", "--without-mingle"], cwd=ROOT, env=env,
                              stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while " ready." not in log.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    return worker


def measure() -> list[Row]:
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)
    rows = np.arange(BATCH) % len(images)
    top, bottom = images[rows, :4].reshape(BATCH, 32), images[rows, 4:].reshape(BATCH, 32)
    with tempfile.TemporaryDirectory() as directory:
        settings = Settings(var_dir=Path(directory), database_url="", broker_url="")
        settings.make_dirs()
        upgrade(settings.database_url)
        port = free_port()
        server = serve_api(settings, port)
        worker = _worker(settings, Path(directory) / "worker.log")
        base = f"http://127.0.0.1:{port}"
        http = httpx.Client(timeout=120)  # a loaded host answers slowly
        try:
            run = http.post(f"{base}/api/runs", json={"dataset": "digits", "method": "mle", "missing_modality": "bottom",
                                                       "missing_rate": 0.9, "epochs": 2}).json()
            deadline = time.monotonic() + 600
            while http.get(f"{base}/api/runs/{run['id']}").json()["state"] != "succeeded":
                if time.monotonic() > deadline:
                    raise RuntimeError("the benchmark's run did not finish")
                time.sleep(0.2)
            url = f"{base}/api/runs/{run['id']}/predict"
            batch_seconds = []
            for _ in range(3):
                started = time.perf_counter()
                answer = http.post(url, json={"x": top.tolist(), "y": bottom.tolist()})
                batch_seconds.append(time.perf_counter() - started)
                assert answer.status_code == 200 and len(answer.json()["predicted"]) == BATCH, answer.text
            single = []
            for i in range(SINGLE_REQUESTS):
                started = time.perf_counter()
                answer = http.post(url, json={"x": top[i].tolist()})
                single.append(time.perf_counter() - started)
                assert answer.status_code == 200, answer.text
        except AssertionError:
            print((Path(directory) / "worker.log").read_text(errors="replace")[-4000:])
            raise
        finally:
            http.close()
            for process in (server, worker):
                process.terminate()
            for process in (server, worker):
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
    load = "load average %.1f, %.1f, %.1f" % os.getloadavg()
    best = min(batch_seconds)
    return [
        Row("prediction, one request of 1,000 digits samples (x and y), through the API", BATCH / best,
            "samples/s", note=f"{best * 1000:.0f} ms for the request; {load}"),
        Row("prediction, single samples (x alone, eq. 5), through the API, p50", float(np.percentile(single, 50)) * 1000,
            "ms"),
        Row("prediction, single samples (x alone, eq. 5), through the API, p95", float(np.percentile(single, 95)) * 1000,
            "ms", note=f"{SINGLE_REQUESTS} requests one after another; each starts a worker process and reads the "
                       f"bundle; {load}"),
    ]


if __name__ == "__main__":
    from .rows import print_table

    print_table(measure())
