"""The worker's Celery app: `celery -A worker.celery_app worker`. Same broker settings as
the API (backend.queue), plus the task. torch is imported only inside the task, never in the
parent process before it forks."""

from backend.queue import make_celery
from backend.settings import get_settings

settings = get_settings()
celery_app = make_celery(settings)
celery_app.conf.update(worker_concurrency=1)  # one training process per worker (per GPU)

from . import tasks  # noqa: E402,F401  (registers the task)
