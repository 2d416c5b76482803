"""missmod's worker: the Celery app and task that run training jobs (celery_app, tasks,
executor, dataset_jobs). The training library it runs is the top-level package `training`."""
