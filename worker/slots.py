"""Several runs per worker (RUNS_PER_GPU slots) without thrashing: each slot is a pool process
that trains one run at a time, with its share of the CPU cores, and a run that ran out of
memory while sharing the GPU is trained next on a slot of its own.

- Thread budget: torch uses a thread per core by default, so N runs at once on C cores would run
  N×C threads that spin against each other (two digits runs on 2 cores: 44.6 s instead of 14.8 s).
  Each run gets C ÷ N threads, or THREADS_PER_RUN, or OMP_NUM_THREADS when the operator set it.
  The budget is set in the environment of the worker's main process before it imports torch
  (worker/preload.py), and again with torch.set_num_threads in each pool process before it trains.
- A slot of its own: the slots of one worker hold a shared lock on a file of their worker while
  they train; a run marked `needs_own_slot` takes it exclusively, so it starts once the runs
  beside it have finished and no other run starts until it ends. A second lock (a turnstile)
  keeps new runs from slipping in while it waits. The kernel drops a dead process's locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from celery import signals

log = logging.getLogger("missmod.worker")

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (a container's cpuset)
    except AttributeError:
        return os.cpu_count() or 1


def thread_budget(slots: int, threads_per_run: int | None = None, cores: int | None = None,
                  environ: dict[str, str] | None = None) -> int:
    """Threads each run's torch uses: THREADS_PER_RUN, else OMP_NUM_THREADS as set by whoever
    started the worker, else the cores shared among the slots (at least one)."""
    if threads_per_run:
        return threads_per_run
    environ = os.environ if environ is None else environ
    if environ.get("OMP_NUM_THREADS", "").isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        return int(environ["OMP_NUM_THREADS"])
    return max(1, (cores or usable_cores()) // max(1, slots))


def set_thread_environment(threads: int) -> None:
    """For the libraries that read their thread count when they load (and child processes)."""
    for name in THREAD_ENV:
        os.environ[name] = str(threads)


def apply_thread_budget(threads: int) -> None:
    """In a slot's process, before it trains."""
    set_thread_environment(threads)
    import torch

    torch.set_num_threads(threads)


def slot_index() -> int:
    """This pool process's slot, 0 … RUNS_PER_GPU-1 (billiard numbers its pool processes and gives
    a replacement process the index of the one it replaces); 0 outside a pool."""
    from billiard import process

    index = getattr(process.current_process(), "index", None)
    return int(index) if index is not None else 0


class SlotLock:
    """Shared while a run trains beside others, exclusive for a run that needs the GPU to itself."""

    def __init__(self, lock_dir: Path, worker: str):
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in worker)
        lock_dir.mkdir(parents=True, exist_ok=True)
        self.path = lock_dir / f"slots-{safe}.lock"
        self.gate = lock_dir / f"slots-{safe}.gate"

    @contextlib.contextmanager
    def hold(self, exclusive: bool) -> Iterator[None]:
        gate = os.open(self.gate, os.O_RDWR | os.O_CREAT, 0o644)
        lock = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(gate, fcntl.LOCK_EX)  # in turn: a waiting exclusive holder keeps new runs out
            try:
                fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            finally:
                fcntl.flock(gate, fcntl.LOCK_UN)
            yield
        finally:
            os.close(lock)  # closing drops the lock
            os.close(gate)

    def is_free_for(self, exclusive: bool) -> bool:
        """Whether hold(exclusive) would start at once (for showing a slot as waiting)."""
        lock = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(lock)


# What an allocation that failed says, beside torch.OutOfMemoryError: the CUDA caching allocator
# and the CPU's ("out of memory", "not enough memory"), and the libraries that allocate on their
# own when the GPU is full: cuBLAS creating its handle or workspace, cuDNN's workspace (when no
# algorithm's workspace fits, cuDNN reports that no algorithm is valid), cuFFT.
OUT_OF_MEMORY_MESSAGES = ("out of memory", "not enough memory", "CUBLAS_STATUS_ALLOC_FAILED",
                          "CUDNN_STATUS_ALLOC_FAILED", "Unable to find a valid cuDNN algorithm", "CUFFT_ALLOC_FAILED")


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA allocation that failed (torch's, cuBLAS's, cuDNN's), or a CPU one."""
    import torch

    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(message in text for message in OUT_OF_MEMORY_MESSAGES)


# The CUDA contexts of the runs sharing a GPU (a few hundred MiB each) lie outside the caching
# allocator's count: a run's share leaves them room.
CONTEXT_ALLOWANCE = 0.05


def memory_share(runs_per_gpu: int, needs_own_slot: bool) -> float:
    """The fraction of its GPU's memory a run may allocate: all of it alone, else an equal share
    less the contexts' allowance. A run that needs more than its share then runs out of memory
    itself, and is queued again for a slot of its own, instead of taking what the runs beside it
    had counted on and making one of them fail."""
    if needs_own_slot or runs_per_gpu <= 1:
        return 1.0
    return (1.0 - CONTEXT_ALLOWANCE) / runs_per_gpu


def limit_device_memory(share: float, device_choice: str) -> None:
    """In a run's own process, before it trains (this initialises CUDA, as the run is about to)."""
    if share >= 1.0 or device_choice == "cpu":
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(share)


def release_device_memory() -> None:
    """Hand the memory a run cached back to the driver at once (for the runs beside it), not when
    its process ends. Call it once the failed step's tensors are unreachable (out of the except
    block that caught the error: its traceback holds them)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# Set by worker/celery_app.py from the settings, in the main process, before the pool forks.
THREADS_PER_RUN: int | None = None


@signals.worker_init.connect
def _budget_the_worker(**_) -> None:
    if THREADS_PER_RUN is not None:
        set_thread_environment(THREADS_PER_RUN)  # before worker/preload.py imports torch


@signals.worker_process_init.connect
def _budget_this_slot(**_) -> None:
    if THREADS_PER_RUN is not None:
        apply_thread_budget(THREADS_PER_RUN)
