"""The job spec: what `POST /api/v1/jobs`, `headq submit` and `headq eval --spec` accept.

Pydantic models, torch-free. Run configurations are the dataclasses of :mod:`headq_spec.runs`:
pydantic validates their fields and runs their ``__post_init__``, so a bad run is rejected with the
same rules (and the same ``ValueError`` wording) the core uses. Every model forbids unknown fields;
``trust_remote_code`` is refused wherever it appears (it is a server setting, never a request field).

Where a model lives is classified by :func:`model_location`; the server checks local paths against
its allowed model directories (the spec alone cannot know them). Every text must be storable (UTF-8,
no NUL) and every number finite, anywhere in a spec (:func:`check_text`, :func:`check_numbers`); the
numeric limits are :mod:`headq_spec.limits`, stated in the JSON Schema as the server enforces them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from headq_spec.errors import readable
from headq_spec.limits import MAX_BATCH, MAX_RANK, MAX_SEED, MAX_TOKENS, MAX_WINDOW, MAX_WINDOWS
from headq_spec.retrieval import RetrievalOptions, check_retrieval_runs
from headq_spec.runs import RunSpec, check_run_list

BUILTIN_MODELS = ("builtin:smollm2-135m",)
DEFAULT_CALIBRATION_RANK = 64  # query directions a calibration keeps unless told
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_FORBIDDEN_KEYS = ("trust_remote_code",)
_SURROGATE = re.compile("[\ud800-\udfff]")

ModelLocation = Literal["builtin", "hub", "path"]


def model_location(model_id: str) -> ModelLocation:
    """``builtin`` (a shipped model), ``hub`` (``name`` or ``org/name``) or ``path`` (anything else)."""
    if model_id in BUILTIN_MODELS:
        return "builtin"
    if _HUB_ID.match(model_id) and ".." not in model_id:
        return "hub"
    return "path"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSpec(_Strict):
    """Which model to load: a hub id, an allowed local folder, or ``builtin:smollm2-135m``."""

    id: str = Field(min_length=1, max_length=500)
    revision: str | None = Field(default=None, max_length=200)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    weights: Literal["auto", "safetensors", "gguf"] = "auto"
    gguf_file: str | None = Field(default=None, max_length=200,  # the pattern states _gguf_name's rule
                                  json_schema_extra={"pattern": r"^[^./\\][^/\\]*\.gguf$"})

    @field_validator("id")
    @classmethod
    def _id_is_printable(cls, value: str) -> str:
        if not value.isprintable() or value != value.strip():
            raise ValueError("must be printable text without surrounding spaces")
        if value.startswith("builtin:") and value not in BUILTIN_MODELS:
            raise ValueError(f"unknown built-in model; known: {list(BUILTIN_MODELS)}")
        return value

    @field_validator("gguf_file")
    @classmethod
    def _gguf_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.endswith(".gguf") or "/" in value or "\\" in value
                                  or value.startswith(".")):
            raise ValueError("must be a plain file name ending in .gguf (only safetensors or GGUF "
                             "weights are loaded)")
        return value

    @model_validator(mode="after")
    def _gguf_consistent(self) -> ModelSpec:
        if self.gguf_file is not None and self.weights == "safetensors":
            raise ValueError("gguf_file: given while weights is 'safetensors'")
        return self


class DatasetSpec(_Strict):
    """Which text to read. ``builtin`` corpora by name, ``hf`` datasets by id, ``files`` by path."""

    source: Literal["builtin", "hf", "files"] = "builtin"
    name: str = Field(default="sotu", min_length=1, max_length=200)
    split: str | None = Field(default=None, max_length=100)
    files: list[str] | None = Field(default=None, max_length=1000)
    text_field: str = Field(default="text", min_length=1, max_length=100)
    window: int = Field(default=1024, ge=2, le=MAX_WINDOW)
    max_tokens: int | None = Field(default=32768, ge=2, le=MAX_TOKENS)
    # evaluation: per-head metrics over the first N windows only (perplexity always uses all)
    head_windows: int | None = Field(default=None, ge=1, le=MAX_WINDOWS)
    # evaluation: windows per forward pass (a speed knob; see headq_core.evaluation.evaluate.evaluate)
    batch: int = Field(default=1, ge=1, le=MAX_BATCH)
    # evaluation: attention path (auto: an O(L)-memory path, fused on a GPU and blockwise on a CPU,
    # unless per-head metrics on a window of at most 2048 tokens) and the query rows per window the
    # O(L) paths sample for per-head metrics
    attention: Literal["auto", "materialised", "blockwise", "fused"] = "auto"
    head_rows: int = Field(default=256, ge=1, le=MAX_WINDOW)
    # start every window as the tokenizer starts a sequence (its BOS): auto, or force it on / off
    add_bos: Literal["auto"] | bool = "auto"
    # which chunks of the corpus become windows: spread evenly over it, or the first ones
    placement: Literal["spread", "contiguous"] = "spread"

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        if self.source == "files" and not self.files:
            raise ValueError("files: required when source is 'files'")
        if self.source != "files" and self.files:
            raise ValueError("files: only allowed when source is 'files'")
        if self.max_tokens is not None and self.max_tokens < self.window:
            raise ValueError(f"max_tokens: must be >= window ({self.window}), got {self.max_tokens}")
        return self


class CalibrationOptions(_Strict):
    """Calibration-only options: how many eigenvectors to keep (the spectrum is always kept whole)."""

    rank: int = Field(default=DEFAULT_CALIBRATION_RANK, ge=1, le=MAX_RANK)


class JobSpec(_Strict):
    """One calibration or evaluation job. ``runs`` are evaluated; a calibration has none."""

    kind: Literal["calibration", "evaluation", "retrieval"]
    label: str | None = Field(default=None, max_length=200)
    model: ModelSpec
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    calibration_job: str | None = Field(default=None, min_length=1, max_length=64)
    calibration: CalibrationOptions | None = None
    # a retrieval job's grid (headq_spec.retrieval); left out of other kinds' dumps and fingerprints
    retrieval: RetrievalOptions | None = Field(default=None, exclude_if=lambda value: value is None)
    runs: list[RunSpec] = Field(default_factory=list, max_length=256)
    seed: int = Field(default=0, ge=0, le=MAX_SEED, strict=True)

    # not strict as a whole: pydantic's strict mode wants RunSpec instances, not dicts; run dicts get
    # the same JSON type check by _runs_json_types, the scalars here are strict one by one.
    model_config = ConfigDict(extra="forbid", strict=False)

    @field_validator("runs", mode="before")
    @classmethod
    def _runs_json_types(cls, runs: Any) -> Any:
        if isinstance(runs, list):
            for index, run in enumerate(runs):
                _check_json_types(run, RunSpec, str(index))
        return runs

    @model_validator(mode="before")
    @classmethod
    def _rules_anywhere(cls, data: Any) -> Any:
        """Every key and value, however nested: no server setting, storable text, finite numbers."""
        found = find_path(data, lambda key: key in _FORBIDDEN_KEYS, values=False)
        if found:
            raise ValueError(f"{found}: is a server setting, never a request field")
        check_text(data)
        check_numbers(data)
        return data

    @model_validator(mode="after")
    def _kind_rules(self) -> JobSpec:
        if self.kind != "retrieval" and self.retrieval is not None:
            raise ValueError("retrieval: only a retrieval job takes retrieval options")
        if self.kind == "calibration":
            if self.runs:
                raise ValueError("runs: a calibration job has no runs")
            if self.calibration_job is not None:
                raise ValueError("calibration_job: only an evaluation names a calibration")
            if self.calibration is None:
                self.calibration = CalibrationOptions()
            return self
        if self.calibration is not None:
            raise ValueError("calibration: only a calibration job takes calibration options")
        if self.kind == "retrieval":
            self.retrieval = self.retrieval or RetrievalOptions()
            self.retrieval.check(self.model.id, self.dataset.max_tokens)
            check_retrieval_runs(self.runs)
        if not self.runs:
            raise ValueError("runs: an evaluation needs at least one run")
        check_run_list(self.runs)
        needs = [run.name for run in self.runs if run.headq is not None or run.intervention is not None
                 or any(side is not None and side.calibrated for side in (run.key, run.value))]
        if needs and self.calibration_job is None:
            raise ValueError(f"calibration_job: required by the HeadQ / intervention / nuq / static fp8 runs "
                             f"{needs}")
        return self

    @field_serializer("runs")
    def _runs_as_dicts(self, runs: list[RunSpec]) -> list[dict[str, Any]]:
        return [run.to_dict() for run in runs]

    def canonical_json(self) -> str:
        """The spec as sorted, compact JSON: equal specs give equal strings."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def fingerprint(self) -> str:
        """SHA-256 of :meth:`canonical_json` (idempotent submission compares these)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def _check_json_types(value: Any, annotation: Any, path: str) -> None:
    """Raise ``ValueError`` naming ``path`` when a JSON value does not have the type a dataclass field
    declares (no ``true`` for an integer, no ``"2"`` for a number); the dataclass checks the rest."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return
        annotation = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        hints = typing.get_type_hints(annotation)
        for name, item in value.items():
            if name in hints and name != "extra":
                _check_json_types(item, hints[name], f"{path}.{name}")
        return
    expected = type(args[0]) if origin is Literal else annotation
    ok = {int: lambda v: type(v) is int, float: lambda v: type(v) in (int, float),
          str: lambda v: isinstance(v, str)}.get(expected, lambda v: True)
    if not ok(value):
        raise ValueError(f"{path}: must be of type {expected.__name__}, got {value!r}")


def find_path(data: Any, match: Callable[[Any], bool], *, keys: bool = True, values: bool = True,
              path: str = "") -> str | None:
    """Dotted path of the first dict key (if ``keys``) or leaf value (if ``values``), in nested
    dicts / lists, for which ``match`` is true (keys shown :func:`~headq_spec.errors.readable`); None
    if there is none."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for name, value in items:
        here = f"{path}.{readable(str(name))}" if path else readable(str(name))
        key_hit = keys and isinstance(data, dict) and match(name)
        if key_hit or (values and not isinstance(value, dict | list) and match(value)):
            return here
        found = find_path(value, match, keys=keys, values=values, path=here)
        if found:
            return found
    return None


def has_nul(value: Any) -> bool:
    """True for text containing a NUL character (which PostgreSQL cannot store)."""
    return isinstance(value, str) and "\x00" in value


def not_utf8(value: Any) -> bool:
    """True for text that UTF-8 cannot encode: a lone surrogate (JSON ``"\\ud83d"``), which neither
    database stores and no JSON answer can carry."""
    return isinstance(value, str) and _SURROGATE.search(value) is not None


def check_text(data: Any) -> None:
    """Refuse text that cannot be stored (:func:`has_nul`, :func:`not_utf8`) anywhere in ``data``, keys
    included: ``ValueError`` naming the path."""
    found = find_path(data, lambda value: has_nul(value) or not_utf8(value))
    if found:
        raise ValueError(f"{found}: text must be storable: no NUL character, no lone surrogate (\\ud83d)")


def check_numbers(data: Any) -> None:
    """Refuse NaN and ±Infinity anywhere in ``data`` (a spec's numbers must be finite): ``ValueError``
    naming the path."""
    found = find_path(data, lambda v: isinstance(v, float) and not math.isfinite(v), keys=False)
    if found:
        raise ValueError(f"{found}: must be a finite number")
