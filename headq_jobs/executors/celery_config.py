"""Celery configuration shared by the enqueue side (API) and the workers: JSON only, late acks,
message priorities.

The API sends the task by name (:data:`TASK_NAME`, argument: the job id), so it never imports the
workers package. A retried attempt is sent with the top priority (:func:`send_priority`), so it
runs before the jobs queued after its first attempt instead of behind them.
"""

from __future__ import annotations

from typing import Any

TASK_NAME = "headq.run_job"
# Redis redelivers an unacknowledged message after this long; a job may run for hours.
REDIS_VISIBILITY_SECONDS = 24 * 3600
MAX_PRIORITY = 9  # RabbitMQ queues are declared with x-max-priority = 9; Redis has steps 0, 3, 6, 9


def send_priority(broker_url: str, retry: bool) -> int:
    """The message priority of an attempt: a retry before any first attempt. RabbitMQ serves the
    highest number first, Redis the lowest."""
    first, retried = (MAX_PRIORITY, 0) if broker_url.startswith("redis") else (0, MAX_PRIORITY)
    return retried if retry else first


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
        "task_reject_on_worker_lost": True,  # the broker puts the message of a dead pool process back first
        "task_queue_max_priority": MAX_PRIORITY,
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
