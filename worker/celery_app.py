"""The worker's Celery app: `celery -A worker.celery_app worker`. Same broker settings as
the API (backend.queue), plus the task. The worker's main process imports torch once it starts
(worker/preload.py) but never initialises CUDA: that happens only inside a run's own process.
Importing this module alone loads no torch.

RUNS_PER_GPU pool processes (slots) train one run each at a time; each run gets its share of
the cores (worker/slots.py). The worker registers itself and its slots in the database
(worker/registry.py) for the workers page."""

import os

from backend.queue import make_celery
from backend.settings import get_settings

# slots before preload: the thread budget is in the environment before torch is imported.
from . import slots  # noqa: F401,I001
from . import preload, shutdown, tasks  # noqa: F401  (the signal handlers and the shared tasks)
from .registry import WorkerRegistry

# CUDA numbers GPUs as nvidia-smi and NVML do (by PCI bus; CUDA's own default is fastest first),
# so a GPU index in CUDA_VISIBLE_DEVICES names one GPU for the run and for its system metrics.
# Read by CUDA when a run's process first uses it, after the fork: set here, in the parent.
os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

settings = get_settings()
slots.THREADS_PER_RUN = slots.thread_budget(settings.runs_per_gpu, settings.threads_per_run)
celery_app = make_celery(settings)
celery_app.conf.update(
    # One process per slot; one worker per GPU. A command line's --concurrency overrides it.
    worker_concurrency=settings.runs_per_gpu,
    # A fresh child process per run: the CUDA context and the allocator's cached memory go with
    # it, and a run that leaves CUDA unusable (a device-side assert) cannot fail the next ones.
    worker_max_tasks_per_child=1,
)
celery_app.steps["worker"].add(WorkerRegistry)
