"""Pydantic models of the jobs the REST API answers with (the job spec lives in :mod:`headq_spec.jobs`,
the results document in :mod:`headq_spec.results`). Pure pydantic: the HTTP client imports them too."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobKind = Literal["calibration", "evaluation", "retrieval"]


class Job(BaseModel):
    """A job as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: JobKind
    label: str | None
    status: JobStatus
    stage: str | None
    progress: float
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    attempts: int
    max_attempts: int
    worker: str | None
    error: str | None
    spec: dict[str, Any]
    model_id: str


class JobPage(BaseModel):
    """One page of ``GET /jobs``."""

    items: list[Job]
    total: int


class JobItems(BaseModel):
    """A list of jobs (``GET /calibrations``, ``POST /results/import``)."""

    items: list[Job]


class Status(BaseModel):
    """``GET /health`` and ``GET /ready``."""

    status: Literal["ok", "unavailable"]
    detail: str | None = None
