"""Pydantic models of what the REST API answers and accepts (besides the job spec, which lives in
:mod:`headq_spec.jobs`). Pure pydantic: the HTTP client imports them too."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.store import INT32_MAX
from headq_spec.jobs import JobSpec, check_text

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobKind = Literal["calibration", "evaluation"]


class Problem(BaseModel):
    """Every error answer: what went wrong, in words."""

    detail: str


class FieldProblem(BaseModel):
    """One invalid field: its dotted path (``runs.0.key.bits``) and why."""

    field: str
    message: str


class ValidationProblem(Problem):
    """A 422 answer: ``detail`` names every field, ``errors`` lists them one by one."""

    errors: list[FieldProblem]


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error status codes."""
    words = {400: "body could not be parsed", 401: "missing or wrong bearer token", 404: "unknown job id",
             409: "wrong state or conflict",
             413: "request body too large", 422: "invalid input (the fields are named)",
             503: "executor or broker unavailable"}
    return {code: {"model": ValidationProblem if code == 422 else Problem, "description": words[code]}
            for code in codes}


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


class HeadRowIn(BaseModel):
    """One per-head row of a results document; metrics are numbers or null, other keys are kept."""

    model_config = ConfigDict(extra="allow", strict=True)

    run: str = Field(min_length=1, max_length=200)
    layer: int = Field(ge=0, le=INT32_MAX)
    head: int = Field(ge=0, le=INT32_MAX)
    kv_head: int = Field(ge=0, le=INT32_MAX)
    key_mse: float | None = None
    score_mse: float | None = None
    fisher: float | None = None
    attn_kl: float | None = None
    entropy: float | None = None
    route_flip: float | None = None
    value_mse: float | None = None
    value_a2: float | None = None
    readout_err: float | None = None


class ModelInfo(BaseModel):
    """The ``model`` block of a results document (``id`` is required; other keys are kept)."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str = Field(min_length=1, max_length=500)


class ResultsDocument(BaseModel):
    """A results document (docs/contracts.md). Required: ``schema_version``, ``kind``, ``model.id``;
    every other key is kept as sent."""

    model_config = ConfigDict(extra="allow", strict=True)

    schema_version: Literal[1]
    kind: JobKind
    model: ModelInfo
    runs: list[dict[str, Any]] = Field(default_factory=list)
    heads: list[HeadRowIn] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        check_text(data)
        return data


class BundleItem(BaseModel):
    """One finished job of a bundle: its spec (optional, validated when given), its results, and
    for a calibration optionally the artifact bytes (base64)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    spec: JobSpec | None = None
    results: ResultsDocument
    artifact_base64: str | None = None


class Bundle(BaseModel):
    """Several finished jobs to import at once."""

    model_config = ConfigDict(extra="forbid", strict=True)

    jobs: list[BundleItem] = Field(min_length=1, max_length=1000)
