"""The real worker (worker.celery_app) whose runs need all of their device's memory: started as
`celery -A tests.support.out_of_memory_worker worker`, a run given only a share of its device
(worker/slots.py: memory_share, when it trains beside other runs) runs out of memory as it
starts, the way a large run does beside others; alone on its device it trains. The fault is
injected here, in the tests: production code carries no hook for it."""

from __future__ import annotations

from celery import signals

from worker.celery_app import celery_app  # noqa: F401  (the app Celery finds in this module)


@signals.worker_process_init.connect
def _runs_need_their_whole_device(**_) -> None:
    """In each run's process (forked from the worker's, one per run), before it trains."""
    import torch

    from worker import executor, slots

    granted: list[float] = []
    limit_device_memory, train = slots.limit_device_memory, executor.train

    def limit_and_remember(share: float, device_choice: str) -> None:
        granted.append(share)
        limit_device_memory(share, device_choice)

    def train_needing_the_whole_device(*args, **kwargs):
        if granted and granted[-1] < 1.0:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected by the test: the run needs its whole device "
                                         f"and was given {granted[-1]:.0%} of it)")
        return train(*args, **kwargs)

    slots.limit_device_memory = limit_and_remember
    executor.train = train_needing_the_whole_device
