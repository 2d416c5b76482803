"""The real worker (worker.celery_app) whose predictions never finish: started as
`celery -A tests.support.hanging_prediction_worker worker`, each prediction sleeps far past any
deadline, the way a stuck model would. The fault is injected here, in the tests: production code
carries no hook for it."""

from __future__ import annotations

import time

from celery import signals

from worker.celery_app import celery_app  # noqa: F401  (the app Celery finds in this module)


@signals.worker_process_init.connect
def _predictions_hang(**_) -> None:
    """In each task's process (forked from the worker's), before it runs."""
    from worker import predict

    def hang(*args, **kwargs):
        time.sleep(3600)

    predict.answer = hang
