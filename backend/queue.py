"""The Celery side both processes share: how to reach the broker and how a run or a dataset job
is sent to the workers.

The broker only carries run ids; the database holds everything else. The API sends tasks by
name, so it never imports the worker's code (nor torch). worker/celery_app.py builds the
same app and registers the task under that name.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from training.builtin_methods import BUILTIN

from .filesystem_broker import TRANSPORT as FILESYSTEM_TRANSPORT
from .settings import Settings

TRAIN_RUN_TASK = "missmod.train_run"
DATASET_JOB_TASK = "missmod.dataset_job"
PREDICT_TASK = "missmod.predict"


def prediction_queue(settings: Settings) -> str:
    """Predictions have a queue of their own beside the runs': a prediction never waits behind
    queued runs, and a worker started with `-Q <this queue>` serves predictions only."""
    return f"{settings.task_queue}-predict"


# The folder broker's transport has no host; naming one spares every process kombu's warning that
# "filesystem://" supplies none. Its folders come from the transport options below.
FILESYSTEM_BROKER_URL = "filesystem://localhost/"


def make_celery(settings: Settings) -> Celery:
    broker = FILESYSTEM_BROKER_URL if settings.uses_filesystem_broker else settings.broker_url
    app = Celery("missmod", broker=broker, set_as_current=False)
    # Redis hands an unacknowledged run id to another worker after this many seconds: keep it
    # above the longest run. A duplicate delivery would be refused by the database anyway.
    transport_options: dict = {"visibility_timeout": settings.broker_visibility_timeout}
    if settings.uses_filesystem_broker:
        settings.make_dirs()
        # kombu's filesystem transport with atomic publishing and a reader that survives a bad
        # file (backend/filesystem_broker.py); it holds whatever URL the command line gives.
        app.conf.broker_transport = FILESYSTEM_TRANSPORT
        queue_dir = str(settings.broker_dir / "queue")
        transport_options = {
            "data_folder_in": queue_dir,
            "data_folder_out": queue_dir,
            "control_folder": str(settings.broker_dir / "control"),
            "processed_folder": str(settings.broker_dir / "processed"),
            "rejected_folder": str(settings.broker_dir / "rejected"),
            "store_processed": False,
            "polling_interval": settings.broker_poll_interval,
        }
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # A broker outage must not end a worker (and its hours-long run): retry forever.
        broker_connection_max_retries=None,
        task_default_queue=settings.task_queue,
        # A worker consumes both (unless started with -Q): its runs' queue and the predictions'.
        # Each on an exchange of its own: bound with one routing key, a run's id would reach both.
        task_queues=(Queue(settings.task_queue, Exchange(settings.task_queue), routing_key=settings.task_queue),
                     Queue(prediction_queue(settings), Exchange(prediction_queue(settings)),
                           routing_key=prediction_queue(settings))),
        task_ignore_result=True,  # results live in the database
        # Long GPU jobs (docs/architecture.md §5): a run id is acknowledged only when the run is over, goes
        # back to the broker if the worker process dies, and a worker holds one id at a time.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A broker blip must not kill a running run: its state and points are in the database,
        # and a duplicate delivery after reconnecting is refused there.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


# The built-in methods: every worker trains them, so their runs go to the default queue, as every
# run did before plugins. A plugin's method has a queue of its own, which only the workers that
# can train it consume (worker/registry.py): a worker without it never takes such a run.
BUILTIN_METHOD_NAMES = frozenset(d.name for d in BUILTIN)


def run_queue(task_queue: str, method: str | None) -> str:
    """The queue a run of `method` goes to."""
    if method is None or method in BUILTIN_METHOD_NAMES:
        return task_queue
    return f"{task_queue}.method.{method}"


class WorkQueue:
    """Sends the ids of what the workers execute: runs and dataset jobs. A run's task id is its id."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.celery = make_celery(settings)
        self.task_queue = settings.task_queue
        # For saying, once sent, which runs no live worker can train (runs/service.py).
        self.heartbeat_timeout = settings.heartbeat_timeout

    def send_run(self, run_id: int, method: str | None = None) -> None:
        """To the queue of the run's method (None: the default queue, a built-in method's)."""
        queue = run_queue(self.task_queue, method)
        options = {} if queue == self.task_queue else {"queue": queue}
        self.celery.send_task(TRAIN_RUN_TASK, args=[run_id], task_id=str(run_id), **options)

    def send_job(self, job_id: int) -> None:
        """A dataset job (preprocessing, feature extraction); task ids `job-<id>` never meet run ids."""
        self.celery.send_task(DATASET_JOB_TASK, args=[job_id], task_id=f"job-{job_id}")

    def send_prediction(self, request_id: str, run_id: int, deadline: float) -> None:
        """A prediction (backend/runs/serving.py; its inputs wait in the database): dropped by the
        worker if not started before its deadline, and its process stopped if it runs past it, so
        it never holds a slot longer."""
        self.celery.send_task(PREDICT_TASK, args=[request_id, run_id], task_id=request_id,
                              queue=prediction_queue(self.settings), expires=deadline,
                              soft_time_limit=deadline, time_limit=deadline + 5)

    def close(self) -> None:
        self.celery.close()
