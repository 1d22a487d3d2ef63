"""The results document as the API accepts it (docs/contracts.md): typed where the store relies on a
field, every other key kept as sent. Pure pydantic."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from headq_spec.api import JobKind
from headq_spec.jobs import JobSpec, check_text
from headq_spec.limits import INT32_MAX


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
