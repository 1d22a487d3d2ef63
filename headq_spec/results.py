"""The results document (docs/contracts.md), typed: what the workers write and the API accepts.
Every block is typed where present, every other key kept as sent; text must be storable anywhere
(:func:`headq_spec.jobs.check_text`), counts lie within :mod:`headq_spec.limits`. Pure pydantic."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from headq_spec.api import JobKind
from headq_spec.jobs import JobSpec, check_text
from headq_spec.limits import INT32_MAX, MAX_RANK, MAX_SEED, MAX_TOKENS, MAX_WINDOW, MAX_WINDOWS
from headq_spec.metrics import HEAD_METRICS
from headq_spec.retrieval import RetrievalBlock

Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]
Interval = Annotated[list[float | None], Field(min_length=2, max_length=2)]  # [low, high]


class HeadKeys(BaseModel):
    """Which head a per-head row describes; other keys are kept."""

    model_config = ConfigDict(extra="allow", strict=True)

    run: str = Field(min_length=1, max_length=200)
    layer: int = Field(ge=0, le=INT32_MAX)
    head: int = Field(ge=0, le=INT32_MAX)
    kv_head: int = Field(ge=0, le=INT32_MAX)

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:  # rows may be validated apart from their document
        check_text(data)
        return data


# one per-head row: the keys, then every metric of HEAD_METRICS as a number or null
HeadRowIn = create_model(
    "HeadRowIn", __base__=HeadKeys, __doc__="One per-head row of a results document.",
    **{name: (float | None, None) for name in HEAD_METRICS},  # type: ignore[call-overload]
)


class ModelInfo(BaseModel):
    """The ``model`` block of a results document (``id`` is required; other keys are kept)."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str = Field(min_length=1, max_length=500)


class RunResult(BaseModel):
    """One run's row: its spec, effective bits per side, perplexity over ``tokens`` scored tokens
    (``nll`` their mean), excess over the dense run and share of its base run's excess removed, each
    aggregate with its standard error (``_se``) and 95% interval (``_ci``) where known."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(min_length=1, max_length=200)
    spec: dict[str, Any] = Field(default_factory=dict)
    effective_bits: dict[str, float | None] = Field(default_factory=dict)
    perplexity: float | None = None
    nll: float | None = None
    tokens: Tokens | None = None
    excess_perplexity: float | None = None
    excess_removed: float | None = None
    perplexity_se: float | None = None
    perplexity_ci: Interval | None = None
    excess_perplexity_se: float | None = None
    excess_perplexity_ci: Interval | None = None
    excess_removed_se: float | None = None
    excess_removed_ci: Interval | None = None


AttentionPath = Literal["materialised", "blockwise", "fused"]


class AttentionInfo(BaseModel):
    """Which attention path evaluated the windows with per-head metrics and the others (null: no
    such windows), and the query rows of each window the per-head metrics read (null: every row)."""

    model_config = ConfigDict(extra="allow", strict=True)

    head_windows: AttentionPath | None = None
    other_windows: AttentionPath | None = None
    head_rows: list[Annotated[int, Field(ge=0, lt=MAX_WINDOW)]] | None = Field(
        default=None, max_length=MAX_WINDOW)


class DatasetInfo(BaseModel):
    """What was read: the corpus (source, split, files, ...), ``tokens`` and ``windows`` of
    ``window`` tokens each, the ``attention`` path; other keys are kept."""

    model_config = ConfigDict(extra="allow", strict=True)

    tokens: Tokens | None = None
    windows: int | None = Field(default=None, ge=0, le=MAX_WINDOWS)
    window: int | None = Field(default=None, ge=1, le=MAX_WINDOW)
    attention: AttentionInfo | None = None


class PositionNll(BaseModel):
    """Mean NLL per token-position bucket: bucket i holds window positions ``edges[i]`` to
    ``edges[i+1] - 1`` and ``tokens[i]`` scored tokens; ``nll`` and ``excess_nll`` (over the
    ``baseline`` dense run, when there is one) map run names to one value per bucket."""

    model_config = ConfigDict(extra="allow", strict=True)

    edges: list[Annotated[int, Field(ge=0, le=MAX_WINDOW)]] = Field(min_length=2, max_length=MAX_WINDOW + 1)
    tokens: list[Tokens]
    nll: dict[str, list[float | None]] = Field(default_factory=dict)
    excess_nll: dict[str, list[float | None]] = Field(default_factory=dict)
    baseline: str | None = None

    @model_validator(mode="after")
    def _one_value_per_bucket(self) -> PositionNll:
        buckets = len(self.edges) - 1
        if len(self.tokens) != buckets or any(
                len(v) != buckets for block in (self.nll, self.excess_nll) for v in block.values()):
            raise ValueError(f"position_nll: every list needs one value per bucket ({buckets})")
        if any(a >= b for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("position_nll.edges: must increase")
        return self


class CalibrationRef(BaseModel):
    """The calibration an evaluation used: its job, tokens and corpus."""

    model_config = ConfigDict(extra="allow", strict=True)

    job_id: str | None = None
    tokens: Tokens | None = None
    dataset: dict[str, Any] | None = None


class ResultsDocument(BaseModel):
    """A results document (docs/contracts.md), of both job kinds. Required: ``schema_version``,
    ``kind``, ``model.id``; the blocks below are typed where present, other keys kept as sent."""

    model_config = ConfigDict(extra="allow", strict=True)

    schema_version: Literal[1]
    kind: JobKind
    model: ModelInfo
    dataset: DatasetInfo | None = None
    calibration: CalibrationRef | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    device: str | None = None
    dtype: str | None = None
    rank: int | None = Field(default=None, ge=1, le=MAX_RANK)
    runs: list[RunResult] = Field(default_factory=list)
    heads: list[HeadRowIn] = Field(default_factory=list)  # type: ignore[valid-type]
    position_nll: PositionNll | None = None
    arrays: dict[str, Any] = Field(default_factory=dict)
    retrieval: RetrievalBlock | None = None  # a retrieval job's prompts and answers
    timing: dict[str, float] = Field(default_factory=dict)

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
