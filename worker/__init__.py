"""missmod's worker: the Celery app and task that run training jobs (celery_app, tasks,
executor) and the training library (worker.training), which can also be used on its own."""
