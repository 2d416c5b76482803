"""The methods this worker trains, said once when it starts (docs/methods.md): every registered
method whose implementation imports here. The worker consumes the queue of each plugin's method it
can train (backend/queue.py: run_queue; the built-in methods share the default queue), so a run
of a method it lacks is never delivered to it: that run waits, queued, until a worker that has the
method is live, and its page says so (backend/workers/service.py: method_availability). The
methods it cannot train are registered with the reason (a missing dependency, a broken plugin),
which the run's waiting message and the workers page show."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from backend.queue import BUILTIN_METHOD_NAMES, run_queue
from backend.settings import get_settings

log = logging.getLogger("missmod.worker")

# name → {"distribution", "version"} of what this worker trains; name → why not, for the others.
trainable: dict[str, dict[str, Any]] = {}
errors: dict[str, str] = {}


def find_trainable() -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    # The implementations import torch: the worker's main process has it already (worker/preload.py),
    # and importing touches no CUDA.
    from training import method_registry
    from training.methods import trainable_methods

    methods, reasons = trainable_methods()
    for broken in method_registry.unavailable():  # the description itself failed here
        reasons.setdefault(broken.name, f"{broken.distribution} {broken.version}: {broken.reason}")
    return {name: {"distribution": d.distribution, "version": d.version} for name, d in methods.items()}, reasons


@signals.celeryd_after_setup.connect
def _consume_the_queues_of_its_methods(sender, instance, **_) -> None:
    """After the command line's -Q is applied, before the consumer starts."""
    found, reasons = find_trainable()
    trainable.clear(), trainable.update(found)
    errors.clear(), errors.update(reasons)
    task_queue = get_settings().task_queue
    queues = instance.app.amqp.queues
    if task_queue in queues.consume_from:  # a worker told to consume other queues only is left as told
        for name in trainable:
            if name not in BUILTIN_METHOD_NAMES:
                queues.select_add(run_queue(task_queue, name))
    log.info("worker %s trains: %s", sender, ", ".join(trainable))
    for name, reason in errors.items():
        log.warning("worker %s cannot train %r: %s", sender, name, reason)
