"""The worker's Celery app: `celery -A worker.celery_app worker`. Same broker settings as
the API (backend.queue), plus the task. The worker's main process imports torch once it starts
(worker/preload.py) but never initialises CUDA: that happens only inside a run's own process.
Importing this module alone loads no torch."""

from backend.queue import make_celery
from backend.settings import get_settings

from . import preload, shutdown, tasks  # noqa: F401  (the signal handlers and the shared tasks)

settings = get_settings()
celery_app = make_celery(settings)
celery_app.conf.update(
    worker_concurrency=1,  # one training process per worker, one worker per GPU
    # A fresh child process per run: the CUDA context and the allocator's cached memory go with
    # it, and a run that leaves CUDA unusable (a device-side assert) cannot fail the next ones.
    worker_max_tasks_per_child=1,
)
