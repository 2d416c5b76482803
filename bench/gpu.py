"""`make bench-gpu`: the GPU host's benchmark, prepared to finish in under 5 minutes and print
one table.

    python bench/gpu.py                      # on a GPU host (device auto → cuda)
    python bench/gpu.py --device cpu --tiny  # dry mode: every code path on a small scale, on the CPU
                                             # (a test runs it, so the script is known to work before a GPU is lent)

Rows, all measured in this one run:
1. N small MLP runs (digits, `mle`) sharing the device with 1, 2 and 4 slots: runs per minute,
   each run in its own process forked from one that has imported torch (as a worker's slots are),
   with its share of the CPU cores.
2. The input pipeline: segments per second delivered to the device from the in-memory cache
   (uint8 112² frames, float16 64-mel spectrograms: the paper's input sizes), gathered into
   pinned memory and copied without blocking (training/batches.py).
3. ResNet-50 end to end (a pair: f on frames, g on spectrograms, `mle` loss with eq. 5 over the
   batch): step time and segments per second in fp32 and in mixed precision (bf16, or fp16 with
   a gradient scaler where the GPU has no bf16), channels-last, cudnn.benchmark; the peak GPU memory;
   the GPU's utilisation while it trains (NVML); and the same steps fed by the input pipeline, which
   tells whether the pipeline or the GPU is the limit.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.rows import Row, print_table, write_json  # noqa: E402


# --- 1. small runs sharing the device ----------------------------------------------------


def _one_small_run(job: tuple[int, str, int, int]) -> float:
    seed, device, epochs, threads = job
    torch.set_num_threads(threads)
    from training.spec import TrainSpec
    from training.train import train

    result = train(TrainSpec(dataset="digits", method="mle", missing_modality="bottom", missing_rate=0.9,
                             epochs=epochs, seed=seed, device=device))
    return float(result.test_accuracy)


def small_runs_per_minute(n_runs: int, slots: int, device: str, epochs: int, threads: int | None = None) -> float:
    """Forked from this process, which must not have initialised CUDA (a forked child could not use it)."""
    assert not torch.cuda.is_initialized()
    import sklearn.datasets  # noqa: F401  what a run imports first, loaded once before forking (worker/preload.py)
    import torch._dynamo as _dynamo  # noqa: F401

    import training.train  # noqa: F401
    cores = len(os.sched_getaffinity(0))
    jobs = [(seed, device, epochs, threads or max(1, cores // slots)) for seed in range(n_runs)]
    context = multiprocessing.get_context("fork")
    started = time.perf_counter()
    with context.Pool(processes=slots, maxtasksperchild=1) as pool:
        accuracies = pool.map(_one_small_run, jobs, chunksize=1)
    assert all(a > 0.3 for a in accuracies), accuracies
    return n_runs * 60.0 / (time.perf_counter() - started)


# --- 2. the input pipeline ---------------------------------------------------------------


def input_config(tiny: bool):
    """The paper's input sizes (the preprocessing defaults); smaller ones in dry mode."""
    from training.audiovisual.config import PreprocessConfig

    return PreprocessConfig(frame_size=32, n_mels=16) if tiny else PreprocessConfig()


def paper_inputs(n: int, config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A cache-shaped training set in CPU memory: frames, spectrograms, labels."""
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 255, size=(n, *config.visual_shape), dtype=np.uint8))
    spectrograms = torch.from_numpy((rng.standard_normal((n, *config.audio_shape)) * 20 - 40).astype(np.float16))
    return frames, spectrograms, torch.as_tensor(rng.integers(0, 6, n))


def pipeline_rate(tensors, device: torch.device, batch: int, seconds: float) -> float:
    """Segments per second from CPU memory to `device`, batches in a random order."""
    from training.batches import BatchGatherer

    gather = BatchGatherer(tensors, device, batch)
    rng = np.random.default_rng(1)
    n = len(tensors[0])
    delivered, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for rows in np.array_split(rng.permutation(n), max(1, n // batch)):
            gather(rows)
            delivered += len(rows)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return delivered / (time.perf_counter() - started)


# --- 3. ResNet-50 end to end ---------------------------------------------------------------


class UtilisationSampler:
    """The GPU's utilisation (NVML), sampled every 50 ms while it runs; None without NVML."""

    def __init__(self, device: torch.device):
        self.samples: list[float] = []
        self.handle = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                from worker.system_metrics import visible_gpu

                gpu = visible_gpu()
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(gpu.index) if gpu else None
                self.nvml = pynvml
            except Exception:
                self.handle = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.wait(0.05):
            self.samples.append(float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))

    def __enter__(self):
        if self.handle is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def resnet50_pair(device: torch.device, channels_last: bool, config):
    from training.methods import MaximumLikelihood
    from training.prepare import ModalityInput
    from training.spec import TrainSpec

    spec = TrainSpec(dataset="ravdess", method="mle", missing_modality="visual", missing_rate=0.5, encoder="resnet50")
    method = MaximumLikelihood(spec)
    frames = ModalityInput(config.visual_shape, torch.full((3,), 110.0), torch.full((3,), 60.0))
    spectrograms = ModalityInput(config.audio_shape, torch.tensor([-40.0]), torch.tensor([20.0]))
    model = method.build_model(spectrograms, frames, 6).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return method, model


def train_steps(device: torch.device, precision: str, batches, steps: int, warmup: int,
                channels_last: bool, config) -> tuple[list[float], float | None, float | None]:
    """Per-step seconds (after `warmup`), mean GPU utilisation, peak GPU memory (GiB)."""
    from training.methods import Batch, ReferenceInputs
    from training.precision import autocast, grad_scaler

    method, model = resnet50_pair(device, channels_last, config)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = grad_scaler(precision, device)
    log_prior = torch.full((6,), -float(np.log(6.0)), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    model.train()
    with UtilisationSampler(device) as utilisation:
        for step in range(warmup + steps):
            started = time.perf_counter()
            x, y, z = batches(step)
            n = len(z)
            batch = Batch(x, y, z, torch.ones(n, dtype=torch.bool, device=device),
                          torch.arange(n, device=device) % 2 == 0)  # half the segments lose their frame: eq. 5
            with autocast(precision, device):
                loss = method.loss(model, batch, log_prior, ReferenceInputs())
            optimiser.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
            else:
                loss.backward()
                optimiser.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= warmup:
                times.append(time.perf_counter() - started)
    assert torch.isfinite(loss), loss
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return times, utilisation.mean, peak


def mixed_precision_for(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16"  # CPU autocast


def measure(device_choice: str, tiny: bool) -> tuple[list[Row], str]:
    device = torch.device("cuda" if device_choice == "auto" and torch.cuda.is_available() else
                          ("cpu" if device_choice == "auto" else device_choice))
    on_gpu = device.type == "cuda"
    rows: list[Row] = []

    # 1. First, while this process has not initialised CUDA: the runs are forked from it.
    n_runs, epochs, slot_counts = (2, 2, (1, 2)) if tiny else (8, 40, (1, 2, 4))
    # Dry mode: one thread per run, so the check stays quick on a busy CI machine.
    rates = {slots: small_runs_per_minute(n_runs, slots, device.type, epochs, 1 if tiny else None)
             for slots in slot_counts}
    for slots, rate in rates.items():
        rows.append(Row(f"{n_runs} digits MLP runs ({epochs} epochs), {slots} slot(s) sharing the {device.type}",
                        rate, "runs/min", rates[1] if slots > 1 else None,
                        rate / rates[1] if slots > 1 else None,
                        note=f"{1 if tiny else max(1, len(os.sched_getaffinity(0)) // slots)} CPU thread(s) per run"))

    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest convolution once
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 row as PyTorch users run it on Ampere+
        torch.backends.cudnn.allow_tf32 = True
    batch = 4 if tiny else 64  # BatchNorm needs two complete segments per batch
    steps, warmup = (1, 1) if tiny else (20, 5)
    n_cache = 4 * batch if tiny else 4096
    config = input_config(tiny)
    frames, spectrograms, labels = paper_inputs(n_cache, config)

    # 2. The input pipeline.
    delivered = pipeline_rate((spectrograms, frames, labels), device, batch, 0.5 if tiny else 5.0)
    rows.append(Row(f"input pipeline: cache → {device.type} (pinned, non-blocking)" if on_gpu else
                    "input pipeline: cache → batches (CPU)", delivered, "segments/s",
                    note=f"batches of {batch}: a uint8 {tuple(frames.shape[1:])} frame + a float16 "
                         f"{tuple(spectrograms.shape[1:])} spectrogram per segment"))

    # 3. ResNet-50 end to end, data already on the device (the GPU alone) …
    resident = (spectrograms[:batch].to(device), frames[:batch].to(device), labels[:batch].to(device))
    mixed = mixed_precision_for(device)
    results = {}
    for precision in ("fp32", mixed):
        times, utilisation, peak = train_steps(device, precision, lambda step: resident, steps, warmup, on_gpu, config)
        results[precision] = (statistics.median(times), utilisation, peak)
    fp32_step, mixed_step = results["fp32"][0], results[mixed][0]
    rows.append(Row("ResNet-50 pair end to end, fp32 step" + (" (TF32 matmuls)" if on_gpu else ""), fp32_step * 1000,
                    "ms/step", note=f"batch {batch}, {batch / fp32_step:.0f} segments/s"))
    rows.append(Row(f"ResNet-50 pair end to end, {mixed} mixed-precision step", mixed_step * 1000, "ms/step",
                    fp32_step * 1000, mixed_step / fp32_step,
                    note=f"{batch / mixed_step:.0f} segments/s; {fp32_step / mixed_step:.2f}× the fp32 speed"
                         + (", channels-last, cudnn.benchmark" if on_gpu else "")))
    rows.append(Row(f"ResNet-50 pair segments/s, {mixed}", batch / mixed_step, "segments/s", batch / fp32_step,
                    fp32_step / mixed_step, note="ratio: mixed precision over fp32"))
    # … and fed by the input pipeline from CPU memory.
    from training.batches import BatchGatherer

    gather = BatchGatherer((spectrograms, frames, labels), device, batch)
    order = np.random.default_rng(2).permutation(n_cache)
    fed = lambda step: gather(order[(step * batch) % (n_cache - batch):][:batch])  # noqa: E731
    times, utilisation, peak = train_steps(device, mixed, fed, steps, warmup, on_gpu, config)
    fed_step = statistics.median(times)
    limit = "GPU (the pipeline keeps up)" if fed_step <= mixed_step * 1.1 else "input pipeline"
    rows.append(Row(f"ResNet-50 pair, {mixed}, fed by the input pipeline", batch / fed_step, "segments/s",
                    batch / mixed_step, mixed_step / fed_step,
                    note=f"limit: {limit}; pipeline alone {delivered:.0f} segments/s = "
                         f"{delivered * mixed_step / batch:.1f}× what the training consumes"))
    rows.append(Row(f"GPU utilisation while training ({mixed})", utilisation if on_gpu else None, "%",
                    note="NVML, sampled every 50 ms" if on_gpu else "no GPU: not measured"))
    rows.append(Row("peak GPU memory, fp32 / mixed", results["fp32"][2], "GiB",
                    note=f"mixed: {results[mixed][2]:.2f} GiB" if on_gpu else "no GPU: not measured"))
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU (dry mode)" if tiny else "CPU"
    return rows, name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/gpu.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="dry mode: every step at the smallest scale")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this host has no usable CUDA GPU")
    started = time.perf_counter()
    rows, name = measure(args.device, args.tiny)
    print(f"\nmissmod GPU benchmark on {name}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"{len(os.sched_getaffinity(0))} CPU cores, {time.perf_counter() - started:.0f} s\n")
    print_table(rows)
    if args.out:
        write_json(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
