"""Several runs per worker on this machine, measured in one run (a fresh embedded stack per
setting: SQLite, filesystem broker, the API and one worker):

- the Table 1 preset on digits with 1 and 2 slots (RUNS_PER_GPU): runs per minute and the ratio;
  each slot gets its thread budget (cores ÷ slots), as a worker gives it;
- one digits run alone vs two at once on a 2-slot worker: each run's own training time
  (started → finished, from the API), so queueing is not counted;
- the input pipeline: segments per second delivered from the preprocessed cache at the paper's
  input sizes, against what a ResNet-50 pair consumes on a modern GPU (see CONSUMPTION);
- mixed precision on the CPU: a small-CNN training step in bf16 autocast over fp32 (informative:
  most CPUs have no fast bf16 path; on a GPU see bench/gpu.py).

    python -m bench.slots_throughput [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from .paper_preset import ROOT, _done, _up, call, free_port, wait_until
from .rows import Row

# What a ResNet-50 pair consumes on a modern GPU, in segments per second. Source: NVIDIA
# DeepLearningExamples, PyTorch ResNet-50 v1.5 README, "Training performance: NVIDIA DGX A100
# (8x A100 80GB)": 2,470 img/s on 1 GPU in mixed precision at 224×224 (pytorch-21.03 container).
# ResNet-50's cost grows with the pixels it sees: a segment is a 112² frame (f) and a 64×51
# spectrogram repeated to 3 channels (g), (112² + 64·51) / 224² = 0.315 of an ImageNet image,
# so one A100 consumes about 2,470 / 0.315 ≈ 7,840 segments/s (an upper bound: small images keep
# a GPU less busy than 224² ones).
A100_RESNET50_IMAGES_PER_SECOND = 2470
CONSUMPTION_SOURCE = ("NVIDIA DeepLearningExamples ResNet-50 v1.5 (PyTorch), 1× A100 80GB, mixed precision: "
                      "2,470 img/s at 224²; scaled by pixels to a 112² frame + a 64×51 spectrogram")


def resnet50_pair_consumption(frame: int = 112, mel: int = 64, spectrogram_frames: int = 51) -> float:
    return A100_RESNET50_IMAGES_PER_SECOND * 224**2 / (frame**2 + mel * spectrogram_frames)


@contextlib.contextmanager
def embedded_stack(slots: int, threads: int | None = None):
    """A fresh embedded stack with one worker of `slots` slots; yields the API's port."""
    from backend.migrate import upgrade
    from backend.settings import Settings

    with tempfile.TemporaryDirectory() as var_dir:
        settings = Settings(var_dir=Path(var_dir), database_url="", broker_url="")
        settings.make_dirs()
        upgrade(settings.database_url)
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env.update({"VAR_DIR": var_dir, "RUNS_PER_GPU": str(slots)})
        if threads:
            env["THREADS_PER_RUN"] = str(threads)
        port = free_port()
        logs = open(Path(var_dir) / "processes.log", "wb")
        processes = [
            subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel",
                              "WARNING", "--hostname", "bench@%h", "--without-gossip", "--without-mingle"],
                             cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT, start_new_session=True),
            subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "backend.main:create_app", "--host",
                              "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                             cwd=ROOT, env=env, stdout=logs, stderr=subprocess.STDOUT, start_new_session=True)]
        try:
            wait_until(lambda: _up(port), 60)
            # The worker is ready once it has registered its slots (after preloading torch).
            wait_until(lambda: any(len(w["slots"]) == slots for w in call(port, "GET", "/api/workers")[1]), 120)
            yield port
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:  # a loaded machine's worker still finishing: its group goes
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(30)
            logs.close()


def preset_runs_per_minute(slots: int, seeds: int, epochs: int, max_runs: int | None = None) -> tuple[float, int]:
    """Runs per minute of the Table 1 preset on digits; with `max_runs`, its first runs only
    (the others are cancelled while still queued, so they cost nothing)."""
    with embedded_stack(slots) as port:
        started = time.perf_counter()
        status, sweep = call(port, "POST", "/api/presets/table1/sweeps",
                             {"dataset": "digits", "seeds": seeds, "epochs": epochs, "only_available": True})
        assert status == 201, sweep
        kept = sweep["run_ids"][:max_runs] if max_runs else sweep["run_ids"]
        for run_id in sweep["run_ids"][len(kept):]:
            call(port, "POST", f"/api/runs/{run_id}/cancel")
        progress = wait_until(lambda: _done(port, sweep["id"]), 3600, 0.5)
        wall = time.perf_counter() - started
        assert progress["failed"] == 0, progress
        return len(kept) * 60 / wall, len(kept)


DIGITS_RUN = {"dataset": "digits", "method": "mle", "fusion": "add", "missing_modality": "bottom",
              "missing_rate": 0.9}


def _training_seconds(port: int, run_ids: list[int]) -> list[float]:
    def finished():
        runs = [call(port, "GET", f"/api/runs/{i}")[1] for i in run_ids]
        return runs if all(r["state"] in ("succeeded", "failed") for r in runs) else None

    runs = wait_until(finished, 1200, 0.2)
    assert all(r["state"] == "succeeded" for r in runs), [r["error"] for r in runs]
    return [(datetime.fromisoformat(r["finished_at"]) - datetime.fromisoformat(r["started_at"])).total_seconds()
            for r in runs]


def alone_and_together(epochs: int) -> tuple[float, list[float]]:
    with embedded_stack(2) as port:
        [alone] = _training_seconds(port, [call(port, "POST", "/api/runs", {**DIGITS_RUN, "epochs": epochs})[1]["id"]])
        ids = [call(port, "POST", "/api/runs", {**DIGITS_RUN, "epochs": epochs, "seed": s})[1]["id"] for s in (1, 2)]
        return alone, _training_seconds(port, ids)


def pipeline_from_cache(n_segments: int, batch: int = 64, seconds: float = 3.0,
                        threads: int | None = None) -> tuple[float, float]:
    """(segments/s loading the training split from the memory-mapped cache once,
    segments/s delivering batches every epoch after that) at the paper's input sizes, with
    `threads` torch threads (the run's budget; default: torch's own)."""
    import torch

    if threads:
        torch.set_num_threads(threads)

    from training.audiovisual.config import PreprocessConfig
    from training.batches import BatchGatherer

    config = PreprocessConfig()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        paths = {"visual": (Path(directory) / "visual.npy", config.visual_shape, np.uint8),
                 "audio": (Path(directory) / "audio.npy", config.audio_shape, np.float16)}
        for path, shape, dtype in paths.values():
            array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n_segments, *shape))
            for start in range(0, n_segments, 1024):  # written in pieces: never the whole array in memory twice
                stop = min(start + 1024, n_segments)
                array[start:stop] = rng.integers(0, 255, size=(stop - start, *shape)).astype(dtype)
            array.flush()
            del array
        started = time.perf_counter()
        loaded = [torch.from_numpy(np.array(np.load(path, mmap_mode="r"))) for path, _, _ in paths.values()]
        load_rate = n_segments / (time.perf_counter() - started)
    labels = torch.as_tensor(rng.integers(0, 6, n_segments))
    gather = BatchGatherer((*loaded, labels), torch.device("cpu"), batch)
    delivered, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for rows in np.array_split(rng.permutation(n_segments), n_segments // batch):
            gather(rows)
            delivered += len(rows)
    return load_rate, delivered / (time.perf_counter() - started)


def cpu_mixed_precision_ratio(steps: int = 3) -> tuple[float, float]:
    """Small-CNN training step (both encoders, mle loss) on the CPU: (fp32 s, bf16 s)."""
    import torch

    from training.methods import Batch, MaximumLikelihood, ReferenceInputs
    from training.precision import autocast
    from training.prepare import ModalityInput
    from training.spec import TrainSpec

    spec = TrainSpec(dataset="ravdess", method="mle", missing_modality="visual", missing_rate=0.5, encoder="small_cnn")
    method, device, n = MaximumLikelihood(spec), torch.device("cpu"), 32
    generator = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(n, 1, 64, 51, generator=generator).half(),
                  torch.randint(0, 255, (n, 3, 112, 112), generator=generator, dtype=torch.uint8),
                  torch.arange(n) % 6, torch.ones(n, dtype=torch.bool), torch.arange(n) % 2 == 0)
    log_prior = torch.full((6,), -float(np.log(6.0)))
    seconds = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = method.build_model(ModalityInput((1, 64, 51), torch.tensor([0.0]), torch.tensor([1.0])),
                                   ModalityInput((3, 112, 112), torch.full((3,), 110.0), torch.full((3,), 60.0)), 6)
        optimiser = torch.optim.Adam(model.parameters())
        times = []
        for step in range(steps + 1):
            started = time.perf_counter()
            with autocast(precision, device):
                loss = method.loss(model, batch, log_prior, ReferenceInputs())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step:
                times.append(time.perf_counter() - started)
        seconds[precision] = statistics.median(times)
    return seconds["fp32"], seconds["bf16"]


PARTS = ("pipeline", "preset", "alone", "precision")


def measure(quick: bool = False, parts: tuple[str, ...] = PARTS) -> list[Row]:
    import torch

    rows: list[Row] = []
    consumption = resnet50_pair_consumption()
    if "pipeline" in parts:
        threads = torch.get_num_threads()
        n, seconds = (2048, 1.5) if quick else (8192, 4.0)
        all_load, all_cores = pipeline_from_cache(n, seconds=seconds, threads=os.cpu_count())
        load_rate, delivered = pipeline_from_cache(n, seconds=seconds, threads=1)
        torch.set_num_threads(threads)
        rows.append(Row("input pipeline: segments/s from the cache (paper sizes, per epoch, 1 thread)", delivered,
                        "segments/s", consumption, delivered / consumption, ">= 2", delivered / consumption >= 2,
                        note=f"vs a ResNet-50 pair's consumption ≈ {consumption:,.0f} segments/s ({CONSUMPTION_SOURCE}); "
                             f"batches of 64 gathered from CPU memory by one torch thread; with {os.cpu_count()} "
                             f"threads {all_cores:,.0f} segments/s (load average {os.getloadavg()[0]:.1f}); the one-time "
                             f"load of the split from the memory-mapped cache ran at {load_rate:,.0f} segments/s"))
    if "preset" in parts:
        rows.extend(_preset_rows(quick))
    if "alone" in parts:
        rows.extend(_alone_rows(quick))
    if "precision" in parts:
        fp32, bf16 = cpu_mixed_precision_ratio(2 if quick else 4)
        rows.append(Row("small-CNN step, bf16 autocast over fp32, CPU (informative)", bf16, "s/step", fp32,
                        bf16 / fp32, note="CPU autocast; on a GPU, bench/gpu.py measures the step that matters"))
    return rows


def _preset_rows(quick: bool) -> list[Row]:
    rows: list[Row] = []
    seeds, epochs, max_runs = (1, 8, 12) if quick else (1, 20, None)
    one, n_runs = preset_runs_per_minute(1, seeds, epochs, max_runs)
    two, _ = preset_runs_per_minute(2, seeds, epochs, max_runs)
    shown = f"first {n_runs} runs" if max_runs else f"{n_runs} runs"
    rows.append(Row(f"Table 1 preset on digits ({shown}, {epochs} epochs), 2 slots vs 1", two, "runs/min",
                    one, two / one, ">= 1.6", two / one >= 1.6,
                    note=f"{one:.1f} runs/min with 1 slot ({os.cpu_count()} threads), {two:.1f} with 2 slots "
                         f"(1 thread each: the thread budget), one worker; load average {os.getloadavg()[0]:.1f}"))
    return rows


def _alone_rows(quick: bool) -> list[Row]:
    rows: list[Row] = []
    run_epochs = 10 if quick else 40
    alone, together = alone_and_together(run_epochs)
    worst = max(together)
    rows.append(Row(f"one digits run ({run_epochs} epochs) alone vs two at once, 2 slots", worst, "s", alone,
                    worst / alone, "<= 2", worst / alone <= 2,
                    note=f"alone {alone:.1f} s; together {together[0]:.1f} s and {together[1]:.1f} s "
                         f"(each run's own training time; load average {os.getloadavg()[0]:.1f})"))
    return rows


def main() -> None:
    from .rows import print_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs and epochs (a few minutes)")
    parser.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS))
    args = parser.parse_args()
    print_table(measure(args.quick, tuple(args.parts)))


if __name__ == "__main__":
    main()
