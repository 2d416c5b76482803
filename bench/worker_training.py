"""Training through the worker against training alone, on the same spec, measured in one run:
`make run` (backend/run_local.py: the API and one Celery worker, SQLite and the filesystem broker
under a fresh VAR_DIR) trains a spec posted to the API; `python -m training --json` trains the
same spec in a process of its own, while the stack stands by as `make run` leaves it. Each run's
own recorded `seconds` (from its first epoch's setup to its end: process start-up and data
loading are not counted, on either side) are compared; the two are taken in turn (worker, CLI,
worker, CLI, …) so that a change of the machine's load falls on both, and the ratio is that of
the medians.

- digits, `mle` with MLP encoders, 40 epochs (an epoch in a few hundredths of a second: what
  the worker adds per epoch and per step shows most there);
- the small CNN end to end on audio-visual segments of a synthetic RAVDESS-like tree (made here
  with PyAV and preprocessed once before the timed runs).

Both paths must reach the same test accuracy at the same epoch (same spec, seed and thread
count on the CPU): the row says so or fails.

    python -m bench.worker_training [--repeats 3] [--only digits small_cnn]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .paper_preset import ROOT, call, free_port, wait_until
from .rows import Row

DIGITS = {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom", "missing_rate": 0.9,
          "epochs": 40, "seed": 0, "device": "cpu"}
SMALL_CNN = {"dataset": "ravdess", "method": "mle", "missing_modality": "visual", "missing_rate": 0.5,
             "encoder": "small_cnn", "batch_size": 64, "epochs": 3, "seed": 0, "device": "cpu"}
SPECS = {"digits": DIGITS, "small_cnn": SMALL_CNN}
TARGET = 1.15


def cli_args(spec: dict) -> list[str]:
    return [f"--{name.replace('_', '-')}={value}" for name, value in spec.items()]


class Stack:
    """`make run` in a fresh VAR_DIR: python -m backend.run_local, as the Makefile starts it."""

    def __init__(self, var_dir: Path, data_dir: Path, threads: int | None = None):
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        self.env.update({"VAR_DIR": str(var_dir), "DATA_DIR": str(data_dir), "PORT": str(self.port),
                         "HOST": "127.0.0.1", "DATABASE_URL": "", "BROKER_URL": ""})
        if threads:  # both arms: the worker's runs (its thread budget) and the CLI (OpenMP's own)
            self.env.update({"THREADS_PER_RUN": str(threads), "OMP_NUM_THREADS": str(threads)})
        self.log = open(var_dir / "make-run.log", "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "backend.run_local"], cwd=ROOT, env=self.env,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self) -> None:
        def ready():
            try:
                return any(w["slots"] for w in call(self.port, "GET", "/api/workers")[1])
            except OSError:
                return False

        wait_until(ready, 180, 0.5)

    def train(self, spec: dict) -> dict:
        status, run = call(self.port, "POST", "/api/runs", spec)
        assert status == 201, run

        def ended():
            body = call(self.port, "GET", f"/api/runs/{run['id']}")[1]
            return body if body["state"] in ("succeeded", "failed", "cancelled") else None

        done = wait_until(ended, 3600, 0.2)
        assert done["state"] == "succeeded", done.get("error")
        return done

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # Ctrl-C: it stops the server and the worker
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


def cli_train(spec: dict, data_dir: Path, env: dict) -> dict:
    import json

    completed = subprocess.run([sys.executable, "-m", "training", *cli_args(spec), "--json", "--data-dir",
                                str(data_dir)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout)


def prepare_small_cnn(data_dir: Path) -> None:
    """A RAVDESS-like tree, preprocessed once (both paths then read the same cache)."""
    from training.audiovisual import catalog
    from training.audiovisual.catalog import VideoOptions

    from .audiovisual_throughput import make_ravdess_like

    make_ravdess_like(data_dir / "ravdess", n_clips=24)
    catalog.ensure_preprocessed("ravdess", data_dir, VideoOptions())


def compare(names: list[str], repeats: int, threads: int | None = None, log=print) -> dict[str, dict[str, list[float]]]:
    """{name: {"worker": [seconds…], "cli": [seconds…], "loads": [1-min load averages]}}."""
    measured: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as directory:
        var_dir, data_dir = Path(directory) / "var", Path(directory) / "data"
        var_dir.mkdir()
        data_dir.mkdir()
        if "small_cnn" in names:
            prepare_small_cnn(data_dir)
        stack = Stack(var_dir, data_dir, threads)
        try:
            stack.wait_ready()
            for name in names:
                spec = SPECS[name]
                figures = measured[name] = {"worker": [], "cli": [], "loads": []}
                for repeat in range(repeats):
                    # Alternate which goes first, so neither always follows the other's traces.
                    order = ("worker", "cli") if repeat % 2 == 0 else ("cli", "worker")
                    for arm in order:
                        figures["loads"].append(os.getloadavg()[0])
                        if arm == "worker":
                            run = stack.train(spec)
                            seconds, result = run["info"]["seconds"], (run["test_accuracy"], run["best_epoch"])
                        else:
                            out = cli_train(spec, data_dir, stack.env)
                            seconds, result = out["info"]["seconds"], (out["test_accuracy"], out["best_epoch"])
                        figures[arm].append(seconds)
                        figures.setdefault(f"{arm}_results", []).append(result)
                        log(f"{name} {arm}: {seconds:.2f} s, test accuracy {result[0]} at epoch {result[1]} "
                            f"(load {figures['loads'][-1]:.1f})")
                results = set(figures["worker_results"]) | set(figures["cli_results"])
                assert len(results) == 1, f"{name}: the worker and the CLI trained differently: {results}"
        finally:
            stack.stop()
    return measured


WHAT = {"digits": "digits, mle (MLP), 40 epochs", "small_cnn": "small CNN on audio-visual segments, 3 epochs"}


def measure(repeats: int = 3, names: tuple[str, ...] = ("digits", "small_cnn"), threads: int | None = None) -> list[Row]:
    rows = []
    shown = f"{threads} thread{'s' if threads > 1 else ''} each" if threads else "default threads"
    for name, figures in compare(list(names), repeats, threads).items():
        worker, cli = statistics.median(figures["worker"]), statistics.median(figures["cli"])
        rows.append(Row.compared(
            f"training through the worker (make run) / python -m training, {WHAT[name]}, {shown}", worker, cli, "s",
            TARGET,
            note=f"the run's own seconds, median of {repeats} each, taken in turn; worker "
                 f"{', '.join(f'{s:.2f}' for s in figures['worker'])}, CLI {', '.join(f'{s:.2f}' for s in figures['cli'])}; "
                 f"same test accuracy and best epoch; load average {min(figures['loads']):.1f}–"
                 f"{max(figures['loads']):.1f} on {os.cpu_count()} cores"))
    return rows


def main() -> None:
    from .rows import print_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=list(SPECS), default=list(SPECS))
    parser.add_argument("--threads", type=int, help="torch threads of both arms (default: each one's own)")
    args = parser.parse_args()
    print_table(measure(args.repeats, tuple(args.only), args.threads))


if __name__ == "__main__":
    main()
