"""Polling helpers for tests that watch real processes change a job row."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select

from headq_jobs.store import get_job
from headq_jobs.store.models import JobRow, ResultRow

T = TypeVar("T")
FINISHED = ("succeeded", "failed", "cancelled")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, logs: Path | None = None) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` (and worker logs) after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{log_tail(logs)}")
        time.sleep(0.1)


def log_tail(logs: Path | None, chars: int = 3000) -> str:
    """The last ``chars`` characters of each worker log under ``logs``, for a failure message."""
    if logs is None:
        return ""
    return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}" for p in sorted(logs.glob("*.log")))


def job_row(sessions: Callable[[], Any], job_id: str) -> JobRow:
    with sessions() as s:
        return get_job(s, job_id)


def wait_status(sessions: Callable[[], Any], job_id: str, statuses: tuple[str, ...], timeout: float,
                logs: Path | None = None) -> JobRow:
    def check() -> JobRow | None:
        row = job_row(sessions, job_id)
        return row if row.status in statuses else None
    return wait_for(check, timeout, f"job {job_id} to become one of {statuses}", logs)


def wait_started(sessions: Callable[[], Any], job_id: str, timeout: float,
                 logs: Path | None = None) -> JobRow:
    """Until the worker is inside the job (it reported progress past loading)."""
    def check() -> JobRow | None:
        row = job_row(sessions, job_id)
        if row.status in FINISHED:
            raise AssertionError(f"job {job_id} ended ({row.status}: {row.error}) before it could be "
                                 "interrupted")
        return row if row.status == "running" and row.progress > 0 else None
    return wait_for(check, timeout, f"job {job_id} to make progress", logs)


def result_attempts(sessions: Callable[[], Any], job_id: str) -> list[int]:
    """Attempts with a stored results document (one per set of results)."""
    with sessions() as s:
        return list(s.scalars(select(ResultRow.attempt).where(ResultRow.job_id == job_id)))
