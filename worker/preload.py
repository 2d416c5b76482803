"""Import the training library (torch, torchvision, the datasets) once, in the worker's main
process, before it forks the process that trains each run.

Each run trains in a fresh pool process (`worker_max_tasks_per_child=1`: its CUDA context and
cached memory go with it). Importing torch there, and what a run's first steps import lazily
(scikit-learn's datasets, the part of torch the optimiser loads), took about 5 s of every run —
on a sweep of short runs, most of the time. Forked from a parent that has already imported it, the child starts at
once. Importing torch does not initialise CUDA (that happens at the first CUDA call, inside a
run) and starts no threads, so the fork stays safe; `preload_training_library` checks both.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import signals

log = logging.getLogger("missmod.worker")


def preload_training_library() -> float:
    """Import what a run needs; returns the seconds it took."""
    started = time.perf_counter()
    threads_before = threading.active_count()
    import sklearn.datasets  # noqa: F401  (digits)
    import torch
    import torch._dynamo  # noqa: F401  (imported by the first optimizer a run builds: 2-3 s)
    from backend.studies import optimiser  # noqa: F401  (optuna: a trial asks its pruner after each epoch; 1 s)

    from . import executor  # noqa: F401  (the training library and its datasets)

    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised while preloading: a forked run could not use it")
    if threading.active_count() != threads_before:
        raise RuntimeError("preloading started threads: forking the run's process would not be safe")
    return time.perf_counter() - started


_seconds: float | None = None


@signals.worker_init.connect
def _preload(**_) -> None:
    global _seconds
    _seconds = preload_training_library()


@signals.worker_ready.connect
def _say_so(**_) -> None:  # worker_init comes before the worker's logging is set up
    if _seconds is not None:
        log.info("training library loaded in %.1f s; each run's process starts from it", _seconds)
