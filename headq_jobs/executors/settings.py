"""Executor-only options, read from the environment (prefix ``HEADQ_``) by pydantic-settings.

Which executor, the broker URL, the stale-heartbeat timeout and the retry cap live in
``headq_jobs.settings.Settings`` (``executor``, ``broker_url``, ``heartbeat_timeout_s``, ``max_attempts``);
this class holds the knobs only the executors and the runner read.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ExecutorSettings(BaseSettings):
    """How often workers report and how executors watch them (durations in seconds)."""

    model_config = SettingsConfigDict(env_prefix="HEADQ_", extra="ignore")

    queue: str = Field(default="headq", min_length=1, max_length=200)  # celery queue name
    heartbeat_s: float = Field(default=5.0, gt=0)
    cancel_grace_s: float = Field(default=30.0, ge=0)
    poll_s: float = Field(default=1.0, gt=0)
    worker_concurrency: int | None = Field(default=None, ge=1)  # None: one per GPU (1 without GPUs)
    worker_max_tasks: int = Field(default=1, ge=0)  # celery: tasks per worker process, 0 = unlimited
    # an evaluation whose calibration is still queued or running waits this long, then fails
    calibration_wait_s: float = Field(default=3600.0, ge=0)


def check_timing(options: ExecutorSettings, heartbeat_timeout_s: float) -> None:
    """A heartbeat must fit at least twice into the stale timeout, else live jobs look dead."""
    if heartbeat_timeout_s <= 2 * options.heartbeat_s:
        raise ValueError(f"heartbeat_timeout_s: must exceed two heartbeats ({2 * options.heartbeat_s:g} s), "
                         f"got {heartbeat_timeout_s:g}")
