"""What the study tests share: a small study's request, and a worker played in this process
(execute_run on each id the embedded broker received, as a Celery worker would)."""

from __future__ import annotations

from backend.settings import Settings

from tests.support import queued_run_ids

# Tiny digits trials: each arm's few trials train in a second or two on one thread.
SMALL_STUDY = {"dataset": "digits", "missing_modality": "bottom", "missing_rate": 0.9,
               "spec": {"epochs": 4}, "trials": 3, "final_seeds": 2, "parallel_trials": 2,
               "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_epochs": 1}}


def play_worker(settings: Settings, done: set[int] | None = None, stop_after: int | None = None) -> list[int]:
    """Execute every run id sent to the embedded broker and not executed yet, in order, until none
    is left (a run's end queues the study's next ones) or `stop_after` runs were executed; returns
    the ids executed."""
    from worker.executor import execute_run

    done = set() if done is None else done
    executed: list[int] = []
    while len(executed) < (stop_after or 200):
        waiting = [run_id for run_id in queued_run_ids(settings) if run_id not in done]
        if not waiting:
            return executed
        for run_id in waiting[:(stop_after or 200) - len(executed)]:
            done.add(run_id)
            execute_run(run_id, settings, worker="test-worker/1")
            executed.append(run_id)
    if stop_after is None:
        raise AssertionError("200 runs executed and more queued: the study does not end")
    return executed
