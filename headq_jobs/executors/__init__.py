"""Executors: how the API hands a job id to workers (torch-free; never imports ``workers``).

``local`` (default) runs each job in a spawned ``python -m workers.local_worker`` process on this
host; ``celery`` sends the task ``headq.run_job`` by name to Celery workers. Both end in the same
``workers.run_job.run_job(job_id)``.
"""

from __future__ import annotations

from headq_jobs.executors.base import Executor, ExecutorUnavailable
from headq_jobs.executors.celery_executor import CeleryExecutor
from headq_jobs.executors.local import LocalExecutor
from headq_jobs.executors.settings import ExecutorSettings
from headq_jobs.settings import Settings


def build_executor(settings: Settings, options: ExecutorSettings | None = None) -> Executor | None:
    """The executor ``settings.executor`` names (None for ``none``: the API only queues jobs)."""
    if settings.executor == "local":
        return LocalExecutor(settings, options)
    if settings.executor == "celery":
        return CeleryExecutor(settings, options)
    return None


__all__ = ["Executor", "ExecutorSettings", "ExecutorUnavailable", "build_executor"]
