"""The first day's GPU checks (docs/gpu-checklist.md), after `make bench-gpu`, in a few minutes:

    python bench/gpu_checklist.py                      # on a GPU host
    python bench/gpu_checklist.py --device cpu --tiny  # dry mode: every code path on the CPU, small
                                                       # (a test runs it, so the script is known to work)

1. The GPU and the wheel: the GPU's name and compute capability, the driver, the pinned wheel's
   architectures, whether it runs here (training/device.py) and what `precision: auto` picks.
2. One `mle` ResNet-50 run per precision (fp32, bf16 where the GPU has it natively, fp16 with its
   gradient scaler), through train() on generated frames and spectrograms of the paper's sizes:
   seconds per epoch (the second, after cuDNN's autotuning), samples per second, the final loss
   scale, peak memory, and that the losses stayed finite. Then one small-CNN run with
   `compile: true`: the image's compiler builds Triton's kernels.
3. Host syncs in a training epoch: torch.cuda.set_sync_debug_mode("warn") over a whole epoch,
   after a warm-up epoch; the loop should synchronise only for its per-step report, once every
   `log_every_steps` steps.
4. NVML against nvidia-smi: the GPU the worker's metrics describe (name, UUID, memory), and the
   utilisation and this process's memory sampled by the worker's SystemSampler during a run,
   next to nvidia-smi's own readings over the same seconds.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.rows import Row  # noqa: E402


def generated_dataset(data_dir: Path, tiny: bool) -> tuple[str, int]:
    """A features file of frames and spectrograms at the paper's sizes (16² in dry mode), with a
    class signal in both, as DATA_DIR/features/gpu_check.npz. Returns its name and size."""
    from bench.gpu import input_config

    config = input_config(tiny)
    frame_shape, audio_shape = (3, 16, 16) if tiny else config.visual_shape, (1, 16, 16) if tiny else config.audio_shape
    n, classes = (150, 3) if tiny else (1024, 6)
    rng = np.random.default_rng(0)
    label = np.arange(n) % classes
    frames = np.clip(rng.normal(100, 40, size=(n, *frame_shape)) + 15 * label[:, None, None, None], 0, 255)
    spectrograms = rng.normal(-40, 20, size=(n, *audio_shape)) + 5 * label[:, None, None, None]
    (data_dir / "features").mkdir(parents=True, exist_ok=True)
    np.savez(data_dir / "features" / "gpu_check.npz", label=label, frame=frames.astype(np.uint8),
             spectrogram=spectrograms.astype(np.float16))
    return "gpu_check", n


def run_spec(device: str, encoder: str, precision: str, **fields):
    from training.spec import TrainSpec

    return TrainSpec.model_validate({"dataset": "gpu_check", "method": "mle", "missing_modality": "spectrogram",
                                     "missing_rate": 0.5, "encoder": encoder, "epochs": 2, "seed": 0,
                                     "batch_size": 16 if encoder == "small_cnn" else 32, "device": device,
                                     "precision": precision, **fields})


def epoch_times():
    """A train() callback: each epoch's training seconds and samples, and every per-step loss."""
    from training.train import TrainingCallback

    class EpochTimes(TrainingCallback):
        def __init__(self):
            self.epochs: list[tuple[int, float]] = []
            self.losses: list[float] = []

        def on_epoch_trained(self, epoch, samples, seconds):
            self.epochs.append((samples, seconds))

        def on_step(self, epoch, step, metrics, progress):
            self.losses.append(metrics["step/train_loss"])

        def on_epoch_end(self, epoch, metrics):
            self.losses.append(metrics["train_loss"])

    return EpochTimes()


def precisions_for(device: torch.device) -> list[str]:
    from training.precision import has_native_bf16

    if device.type != "cuda":  # dry mode: fp16 takes the scaler's path (bf16's is fp16's without it)
        return ["fp32", "fp16"]
    return ["fp32", "bf16", "fp16"] if has_native_bf16(device) else ["fp32", "fp16"]


def one_run(spec, data_dir: Path, device: torch.device) -> tuple[Row, dict]:
    from training.train import train

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = epoch_times()
    result = train(spec, times, data_dir=data_dir)
    samples, seconds = times.epochs[-1]
    finite = all(math.isfinite(loss) for loss in times.losses)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    note = (f"{result.info['precision']}; test accuracy {result.test_accuracy:.3f}; losses "
            f"{'finite' if finite else 'NOT FINITE'}"
            + (f"; loss scale {result.info['loss_scale']:g}" if "loss_scale" in result.info else "")
            + (f"; peak {peak:.2f} GiB" if peak is not None else "")
            + ("; compiled" if result.info.get("compiled") else ""))
    row = Row(f"mle {spec.encoder} run, {spec.precision}{', compile' if spec.compile else ''}: epoch 2",
              seconds, "s/epoch", note=f"{samples / seconds:.0f} samples/s; {note}")
    return row, {"finite": finite, "info": result.info}


def trainer_for(spec, data_dir: Path, device: torch.device):
    """A trainer as train() builds it, with its training set and reference inputs."""
    from training.datasets import load_dataset
    from training.prepare import prepare_data
    from training.train import Trainer, TrainingCallback

    torch.manual_seed(spec.seed)
    prepared = prepare_data(load_dataset(spec.dataset, data_dir), spec, device)
    trainer = Trainer(spec, TrainingCallback(), prepared, device)
    train_set = trainer.method.prepare(prepared.train, trainer.callback, spec.seed)
    return trainer, train_set, trainer.reference_inputs(train_set)[1]


def syncs_in_an_epoch(data_dir: Path, device: torch.device, encoder: str) -> Row:
    if device.type != "cuda":
        return Row("host syncs in a training epoch (set_sync_debug_mode)", None, "syncs",
                   note="no GPU: not checked (tests/training/test_gpu_stand_ins.py counts host reads on the CPU)")
    every = 5
    spec = run_spec("cuda", encoder, "auto", log_every_steps=every)
    trainer, train_set, references = trainer_for(spec, data_dir, device)
    with trainer.speed.switches():
        trainer.train_epoch(train_set, references, epoch=1)  # warm-up: cuDNN's autotuning, the allocator
        torch.cuda.synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.train_epoch(train_set, references, epoch=2)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    steps = trainer.batches_per_epoch(train_set)
    expected = math.ceil(steps / every)
    return Row("host syncs in a training epoch (set_sync_debug_mode)", len(syncs), "syncs", expected,
               len(syncs) / expected, target="<= 1", met=len(syncs) <= expected,
               note=f"{steps} steps, a report every {every}: {expected} expected"
                    + (f"; first: {syncs[0][:120]}" if syncs else ""))


def nvidia_smi(*query: str) -> list[list[str]]:
    out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return [[field.strip() for field in line.split(",")] for line in out.splitlines() if line.strip()]


def nvml_against_nvidia_smi(spec, data_dir: Path, device: torch.device) -> list[Row]:
    from worker.system_metrics import SystemSampler, visible_gpu

    gpu = visible_gpu()
    if device.type != "cuda" or gpu is None:
        return [Row("NVML against nvidia-smi", None, "", note="no GPU (or no NVML): not checked")]
    [[name, uuid, total]] = nvidia_smi("--query-gpu=name,uuid,memory.total", "-i", gpu.uuid)
    same = name == gpu.name and uuid == gpu.uuid and abs(float(total) - gpu.memory_total_mib) <= 1
    rows = [Row("NVML's GPU is nvidia-smi's", float(same), "1 = yes", target=">= 1", met=same,
                note=f"NVML: {gpu.name} {gpu.uuid} {gpu.memory_total_mib:.0f} MiB; nvidia-smi: {name} {uuid} {total} MiB; "
                     f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
                     f"CUDA_DEVICE_ORDER={os.environ.get('CUDA_DEVICE_ORDER')!r}")]
    readings: list[tuple[float, float | None]] = []
    stop = threading.Event()

    def poll():
        while not stop.wait(0.5):
            [[utilisation]] = nvidia_smi("--query-gpu=utilization.gpu", "-i", gpu.uuid)
            mine = [float(used) for pid, used in nvidia_smi("--query-compute-apps=pid,used_memory", "-i", gpu.uuid)
                    if pid == str(os.getpid())]
            readings.append((float(utilisation), mine[0] if mine else None))

    from training.train import train

    poller = threading.Thread(target=poll, daemon=True)
    with SystemSampler(0.5, gpu) as sampler:
        poller.start()
        train(spec.model_copy(update={"epochs": 3}), data_dir=data_dir)
        figures = sampler.epoch_figures()
        stop.set()
        poller.join()
    smi_utilisation = statistics.fmean(u for u, _ in readings) if readings else None
    smi_memory = max((m for _, m in readings if m is not None), default=None)
    rows.append(Row("GPU utilisation during a run: NVML (the run's System panel)", figures["gpu_utilization"], "%",
                    smi_utilisation, note="baseline: nvidia-smi over the same seconds"))
    rows.append(Row("this process's GPU memory, peak: NVML (System panel)", figures["gpu_memory_used"], "MiB",
                    smi_memory, note="baseline: nvidia-smi --query-compute-apps (none in a container: NVML then "
                                     "falls back to the allocator's reserved memory)"))
    return rows


def measure(device_choice: str, tiny: bool) -> tuple[list[Row], str]:
    from training.device import pick_device, runs_on
    from training.precision import resolve_precision

    device = pick_device(device_choice)
    on_gpu = device.type == "cuda"
    rows: list[Row] = []
    arch_list = torch.cuda.get_arch_list()
    if on_gpu:
        capability = torch.cuda.get_device_capability(device)
        [[driver]] = nvidia_smi("--query-gpu=driver_version", "-i", "0")
        rows.append(Row(f"GPU: {torch.cuda.get_device_name(device)}", float(".".join(map(str, capability))),
                        "compute capability", note=f"driver {driver}; torch {torch.__version__}, CUDA "
                                                   f"{torch.version.cuda}; wheel built for {', '.join(arch_list)}; "
                                                   f"runs here: {runs_on(capability, arch_list)}; precision auto "
                                                   f"picks {resolve_precision('auto', device, 'resnet50')} for CNNs"))
    else:
        rows.append(Row("GPU: none (dry mode)", None, "", note=f"wheel built for {', '.join(arch_list)}"))

    with tempfile.TemporaryDirectory() as directory:
        data_dir = Path(directory)
        generated_dataset(data_dir, tiny)
        encoder = "small_cnn" if tiny else "resnet50"
        outcomes = []
        for precision in precisions_for(device):
            row, outcome = one_run(run_spec(device.type, encoder, precision), data_dir, device)
            rows.append(row)
            outcomes.append(outcome)
        if not tiny:  # compiling on the CPU takes minutes; on a GPU, Triton and the image's compiler
            row, outcome = one_run(run_spec(device.type, "small_cnn", "auto", compile=True), data_dir, device)
            rows.append(row)
            outcomes.append(outcome)
        rows.append(syncs_in_an_epoch(data_dir, device, encoder))
        rows.extend(nvml_against_nvidia_smi(run_spec(device.type, encoder, "auto"), data_dir, device))
    assert all(outcome["finite"] for outcome in outcomes), "a run's loss was not finite: see the table"
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU (dry mode)"
    return rows, name


def main(argv: list[str] | None = None) -> int:
    from bench.gpu import run_device_script

    return run_device_script("bench/gpu_checklist.py", __doc__, "GPU checklist", measure, argv)


if __name__ == "__main__":
    sys.exit(main())
