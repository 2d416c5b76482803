"""A run's system metrics, sampled in its own process while it trains: GPU utilisation and
memory through NVML (nvidia-ml-py, NVIDIA's bindings: it reads the driver, never initialises
CUDA, and fails cleanly without one), the process's CPU time and resident memory (psutil), and
the samples per second of its training steps. One figure per name per epoch, stored next to
the run's metric points (backend/runs/system.py). On a host without an NVIDIA driver the GPU
figures are absent, not zero."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import psutil

log = logging.getLogger("missmod.worker")
MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuIdentity:
    index: int  # NVML's index (not CUDA's)
    uuid: str
    name: str
    memory_total_mib: float


def _nvml():
    """The initialised pynvml module, or None without an NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no library, no driver, no device: a CPU-only host
        return None


def visible_gpu(environ: dict[str, str] | None = None) -> GpuIdentity | None:
    """The GPU a run of this process trains on (`cuda` is the first one CUDA_VISIBLE_DEVICES
    names, by index or UUID; all GPUs when it is unset); None on a CPU-only host, and where the
    index could name another GPU for NVML than for CUDA."""
    environ = os.environ if environ is None else environ
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        visible = environ.get("CUDA_VISIBLE_DEVICES")
        first = visible.split(",")[0].strip() if visible is not None else "0"
        count = nvml.nvmlDeviceGetCount()
        if first in ("", "-1") or count == 0:
            return None
        if first.isdigit() and count > 1 and environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
            # NVML numbers GPUs by PCI bus, CUDA fastest first unless told otherwise: the figures
            # would be another GPU's. The worker sets PCI_BUS_ID (worker/celery_app.py).
            log.warning("GPU %s of %d: CUDA_DEVICE_ORDER is not PCI_BUS_ID, so CUDA's and NVML's numbering may "
                        "differ; no GPU figures (set CUDA_DEVICE_ORDER=PCI_BUS_ID or name the GPU by UUID)",
                        first, count)
            return None
        handle = (nvml.nvmlDeviceGetHandleByIndex(int(first)) if first.isdigit()
                  else nvml.nvmlDeviceGetHandleByUUID(first))
        return GpuIdentity(index=int(nvml.nvmlDeviceGetIndex(handle)), uuid=str(nvml.nvmlDeviceGetUUID(handle)),
                           name=str(nvml.nvmlDeviceGetName(handle)),
                           memory_total_mib=nvml.nvmlDeviceGetMemoryInfo(handle).total / MIB)
    except Exception as error:
        log.warning("NVML could not describe the GPU %r: %s", environ.get("CUDA_VISIBLE_DEVICES"), error)
        return None


class SystemSampler:
    """Samples every `interval` seconds from a daemon thread; `epoch_figures()` returns one
    epoch's figures and starts the next window. `epoch_trained(samples, seconds)` is fed by the
    training loop's timing hook for samples per second."""

    def __init__(self, interval: float, gpu: GpuIdentity | None, threads: int | None = None):
        self.interval, self.gpu, self.threads = interval, gpu, threads
        self.process = psutil.Process()
        self._nvml = _nvml() if gpu is not None else None
        self._handle = self._nvml.nvmlDeviceGetHandleByIndex(gpu.index) if self._nvml is not None else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)
        self._reset()

    def _reset(self) -> None:
        self._window_started = time.monotonic()
        self._cpu_started = sum(self.process.cpu_times()[:2])
        self._rss_peak = self.process.memory_info().rss
        self._gpu_util: list[float] = []
        self._gpu_memory_peak: float | None = None
        self._samples = 0
        self._train_seconds = 0.0

    def _gpu_memory_of_this_process(self) -> float | None:
        pid = os.getpid()
        try:
            for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    return proc.usedGpuMemory / MIB
        except Exception:
            pass
        import torch  # in a container NVML reports the host's pids: ask the allocator instead

        if torch.cuda.is_initialized():
            return torch.cuda.memory_reserved() / MIB
        return None

    def sample(self) -> None:
        rss = self.process.memory_info().rss
        util = memory = None
        if self._handle is not None:
            try:
                util = float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            except Exception:
                util = None
            memory = self._gpu_memory_of_this_process()
        with self._lock:
            self._rss_peak = max(self._rss_peak, rss)
            if util is not None:
                self._gpu_util.append(util)
            if memory is not None:
                self._gpu_memory_peak = max(self._gpu_memory_peak or 0.0, memory)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as error:  # a lost sample is not worth a failed run
                log.debug("system sample failed: %s", error)

    def epoch_trained(self, samples: int, seconds: float) -> None:
        with self._lock:
            self._samples += samples
            self._train_seconds += seconds

    def epoch_figures(self) -> dict[str, float | None]:
        """This epoch's figures (None: not measured here, left out when stored)."""
        self.sample()
        with self._lock:
            wall = max(time.monotonic() - self._window_started, 1e-9)
            cpu = sum(self.process.cpu_times()[:2]) - self._cpu_started
            figures: dict[str, float | None] = {
                "cpu_percent": 100.0 * cpu / wall,
                "rss": self._rss_peak / MIB,
                "samples_per_second": self._samples / self._train_seconds if self._train_seconds > 0 else None,
                "threads": float(self.threads) if self.threads else None,
            }
            if self.gpu is not None:
                figures["gpu_utilization"] = sum(self._gpu_util) / len(self._gpu_util) if self._gpu_util else None
                figures["gpu_memory_used"] = self._gpu_memory_peak
                figures["gpu_memory_total"] = self.gpu.memory_total_mib
            self._reset()
        return figures

    def __enter__(self) -> "SystemSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
