"""Celery configuration shared by the enqueue side (API) and the workers: JSON only, late acks.

The API sends the task by name (:data:`TASK_NAME`, argument: the job id), so it never imports the
workers package.
"""

from __future__ import annotations

from typing import Any

TASK_NAME = "headq.run_job"
# Redis redelivers an unacknowledged message after this long; a job may run for hours.
REDIS_VISIBILITY_SECONDS = 24 * 3600


def celery_config(broker_url: str, *, queue: str = "headq", max_tasks_per_child: int = 1) -> dict[str, Any]:
    """Settings for ``Celery.conf.update``: at-least-once delivery, one job per process at a time.

    ``max_tasks_per_child=0`` keeps worker processes alive across tasks (model reuse, ADR 0002).
    """
    return {
        "broker_url": broker_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,  # results live in the database, keyed by (job, attempt)
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": max_tasks_per_child or None,
        "task_default_queue": queue,
        "task_routes": {TASK_NAME: {"queue": queue}},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3.0,
        "broker_transport_options": {"visibility_timeout": REDIS_VISIBILITY_SECONDS,
                                     "max_retries": 1},
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }
