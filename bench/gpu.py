"""`make bench-gpu`: the GPU host's benchmark, prepared to finish in under 5 minutes and print
one table.

    python bench/gpu.py                      # on a GPU host (device auto → cuda)
    python bench/gpu.py --device cpu --tiny  # dry mode: every code path on a small scale, on the CPU
                                             # (a test runs it, so the script is known to work before a GPU is lent)

Rows, all measured in this one run:
1. N small MLP runs (digits, `mle`) sharing the device with 1, 2 and 4 slots: runs per minute,
   each run in its own process forked from one that has imported torch (as a worker's slots are),
   with its share of the CPU cores. They come first, while this process has not touched CUDA:
   not even `torch.cuda.is_available()`, which initialises the driver, after which a forked child
   cannot use CUDA ("Cannot re-initialize CUDA in forked subprocess"). Each run picks its device
   itself, in its own process.
2. The input pipeline: segments per second delivered to the device from the in-memory cache
   (uint8 112² frames, float16 64-mel spectrograms: the paper's input sizes), gathered into
   pinned memory and copied without blocking on a stream of its own (training/batches.py).
3. ResNet-50 end to end (a pair: f on frames, g on spectrograms, `mle` loss with eq. 5 over the
   batch), with the trainer's own step (training/speed.py): step time and segments per second in
   fp32 (no TF32, as the trainer runs it) and in the mixed precision `auto` picks on this GPU
   (bf16, or fp16 with a gradient scaler where the GPU has no native bf16), channels-last,
   cudnn.benchmark; the peak GPU memory; the GPU's utilisation over the timed steps (NVML); and the
   same steps fed by the input pipeline, which tells whether the pipeline or the GPU is the limit.
   The timed steps are queued back to back, as the trainer queues them, and waited for once at
   their end.
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


def _one_small_run(job: tuple[int, str, int, int]) -> tuple[float, str]:
    """One digits run in a forked process: its test accuracy and the device it trained on."""
    seed, device, epochs, threads = job
    torch.set_num_threads(threads)
    from training.spec import TrainSpec
    from training.train import train

    result = train(TrainSpec(dataset="digits", method="mle", missing_modality="bottom", missing_rate=0.9,
                             epochs=epochs, seed=seed, device=device))
    return float(result.test_accuracy), str(result.info["device"])


def fork_context():
    """How the small runs' processes start: forked, as a worker's slots are. The parent must not
    have touched CUDA, or a forked child cannot use it; `is_initialized()` below does not see
    everything (`torch.cuda.is_available()` initialises the driver and leaves it False), so this
    process calls nothing of torch.cuda before the runs (tests/training/test_gpu_bench.py checks
    in the children)."""
    assert not torch.cuda.is_initialized()
    return multiprocessing.get_context("fork")


def small_runs_per_minute(n_runs: int, slots: int, device: str, epochs: int,
                          threads: int | None = None) -> tuple[float, str]:
    """Runs per minute with `slots` at once, and the device type they trained on (`device`: the
    spec's choice, made in each run's own process)."""
    import sklearn.datasets  # noqa: F401  what a run imports first, loaded once before forking (worker/preload.py)
    import torch._dynamo as _dynamo  # noqa: F401

    import training.train  # noqa: F401
    cores = len(os.sched_getaffinity(0))
    jobs = [(seed, device, epochs, threads or max(1, cores // slots)) for seed in range(n_runs)]
    context = fork_context()
    started = time.perf_counter()
    with context.Pool(processes=slots, maxtasksperchild=1) as pool:
        results = pool.map(_one_small_run, jobs, chunksize=1)
    assert all(accuracy > 0.3 for accuracy, _ in results), results
    return n_runs * 60.0 / (time.perf_counter() - started), results[0][1].split(":")[0]


def small_run_rows(device_choice: str, tiny: bool) -> list[Row]:
    n_runs, epochs, slot_counts = (2, 2, (1, 2)) if tiny else (8, 40, (1, 2, 4))
    # Dry mode: one thread per run, so the check stays quick on a busy CI machine.
    measured = {slots: small_runs_per_minute(n_runs, slots, device_choice, epochs, 1 if tiny else None)
                for slots in slot_counts}
    rates = {slots: rate for slots, (rate, _) in measured.items()}
    device = measured[1][1]
    return [Row(f"{n_runs} digits MLP runs ({epochs} epochs), {slots} slot(s) sharing the {device}",
                rate, "runs/min", rates[1] if slots > 1 else None, rate / rates[1] if slots > 1 else None,
                note=f"{1 if tiny else max(1, len(os.sched_getaffinity(0)) // slots)} CPU thread(s) per run")
            for slots, rate in rates.items()]


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
    """The GPU's utilisation (NVML), sampled every 50 ms between start() and stop(); None without
    NVML."""

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

    def start(self) -> None:
        if self.handle is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def resnet50_pair(device: torch.device, precision: str, config):
    """The method, the model prepared as the trainer prepares it, and the trainer's step."""
    from training.methods import MaximumLikelihood
    from training.prepare import ModalityInput
    from training.spec import TrainSpec
    from training.speed import TrainingSpeed

    spec = TrainSpec(dataset="ravdess", method="mle", missing_modality="visual", missing_rate=0.5, encoder="resnet50",
                     precision=precision)
    method = MaximumLikelihood(spec)
    speed = TrainingSpeed.for_run(spec, device)
    frames = ModalityInput(config.visual_shape, torch.full((3,), 110.0), torch.full((3,), 60.0))
    spectrograms = ModalityInput(config.audio_shape, torch.tensor([-40.0]), torch.tensor([20.0]))
    model = speed.prepare_model(method.build_model(spectrograms, frames, 6).to(device))
    return method, model, speed


def train_steps(device: torch.device, precision: str, batches, steps: int, warmup: int,
                config) -> tuple[float, float | None, float | None]:
    """Seconds per step over `steps` steps after `warmup`, mean GPU utilisation over those steps,
    peak GPU memory (GiB)."""
    from training.methods import Batch, ReferenceInputs

    method, model, speed = resnet50_pair(device, precision, config)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4, **speed.optimiser_options())
    log_prior = torch.full((6,), -float(np.log(6.0)), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    utilisation = UtilisationSampler(device)
    with speed.switches():
        for step in range(warmup + steps):
            if step == warmup:  # the warm-up (cuDNN autotuning, the allocator's growth) is not timed
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                utilisation.start()
                started = time.perf_counter()
            x, y, z = batches(step)
            n = len(z)
            # The first half complete, the second half without its frame: eq. 5 (rows part after part).
            half = (n + 1) // 2
            has_y = torch.arange(n, device=device) < half
            batch = Batch(x, y, z, torch.ones(n, dtype=torch.bool, device=device), has_y, parts=(half, n - half, 0))
            with speed.autocast():
                loss = method.loss(model, batch, log_prior, ReferenceInputs())
            speed.step(loss, optimiser)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - started) / steps
        utilisation.stop()
    assert torch.isfinite(loss), loss
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, utilisation.mean, peak


def mixed_precision_for(device: torch.device) -> str:
    """What `precision: auto` picks for a CNN run on this device; bf16 CPU autocast in dry mode."""
    from training.precision import resolve_precision

    return resolve_precision("auto", device, "resnet50") if device.type == "cuda" else "bf16"


def measure(device_choice: str, tiny: bool) -> tuple[list[Row], str]:
    # 1. First, while this process has not touched CUDA: the runs are forked from it.
    rows = small_run_rows(device_choice, tiny)
    device = torch.device("cuda" if device_choice == "auto" and torch.cuda.is_available() else
                          ("cpu" if device_choice == "auto" else device_choice))
    on_gpu = device.type == "cuda"
    batch = 4 if tiny else 64  # BatchNorm needs two complete segments per batch
    steps, warmup = (1, 1) if tiny else (20, 5)
    n_cache = 4 * batch if tiny else 4096
    config = input_config(tiny)
    frames, spectrograms, labels = paper_inputs(n_cache, config)

    # 2. The input pipeline.
    delivered = pipeline_rate((spectrograms, frames, labels), device, batch, 0.5 if tiny else 5.0)
    rows.append(Row(f"input pipeline: cache → {device.type} (pinned, non-blocking, copy stream)" if on_gpu else
                    "input pipeline: cache → batches (CPU)", delivered, "segments/s",
                    note=f"batches of {batch}: a uint8 {tuple(frames.shape[1:])} frame + a float16 "
                         f"{tuple(spectrograms.shape[1:])} spectrogram per segment"))

    # 3. ResNet-50 end to end, data already on the device (the GPU alone) …
    resident = (spectrograms[:batch].to(device), frames[:batch].to(device), labels[:batch].to(device))
    mixed = mixed_precision_for(device)
    results = {precision: train_steps(device, precision, lambda step: resident, steps, warmup, config)
               for precision in ("fp32", mixed)}
    fp32_step, mixed_step = results["fp32"][0], results[mixed][0]
    rows.append(Row("ResNet-50 pair end to end, fp32 step" + (" (no TF32, as the trainer)" if on_gpu else ""),
                    fp32_step * 1000, "ms/step", note=f"batch {batch}, {batch / fp32_step:.0f} segments/s"))
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
    fed_step, utilisation, peak = train_steps(device, mixed, fed, steps, warmup, config)
    limit = "GPU (the pipeline keeps up)" if fed_step <= mixed_step * 1.1 else "input pipeline"
    rows.append(Row(f"ResNet-50 pair, {mixed}, fed by the input pipeline", batch / fed_step, "segments/s",
                    batch / mixed_step, mixed_step / fed_step,
                    note=f"limit: {limit}; pipeline alone {delivered:.0f} segments/s = "
                         f"{delivered * mixed_step / batch:.1f}× what the training consumes"))
    rows.append(Row(f"GPU utilisation while training ({mixed})", utilisation if on_gpu else None, "%",
                    note="NVML, sampled every 50 ms over the timed steps" if on_gpu else "no GPU: not measured"))
    rows.append(Row("peak GPU memory, fp32 / mixed", results["fp32"][2], "GiB",
                    note=f"mixed: {results[mixed][2]:.2f} GiB" if on_gpu else "no GPU: not measured"))
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU (dry mode)" if tiny else "CPU"
    return rows, name


def run_device_script(script: str, doc: str, title: str, measure, argv: list[str] | None = None) -> int:
    """The command line of a GPU script (this one, gpu_checklist.py): --device, --tiny (dry mode),
    --out; `measure(device, tiny)` gives its rows and the device's name; one table."""
    parser = argparse.ArgumentParser(prog=f"python {script}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="dry mode: every step at the smallest scale")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows, name = measure(args.device, args.tiny)
    print(f"\nmissmod {title} on {name}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"{len(os.sched_getaffinity(0))} CPU cores, {time.perf_counter() - started:.0f} s\n")
    print_table(rows)
    if args.out:
        write_json(rows, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    # No torch.cuda call before measure(): the small runs are forked first (a run on `--device
    # cuda` without a GPU fails in its own process, with pick_device's message).
    return run_device_script("bench/gpu.py", __doc__, "GPU benchmark", measure, argv)


if __name__ == "__main__":
    sys.exit(main())
