"""Bounds and storable values in the spec: every bound the JSON Schema states is the one the run
dataclasses enforce, numbers are finite and bounded, text is storable, and a refused key or value is
named in an error message that can be sent."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pydantic import ValidationError

from headq_spec.errors import field_errors
from headq_spec.jobs import JobSpec
from headq_spec.limits import MAX_RANK, MAX_SEED, MAX_TOKENS, MAX_WINDOW, MAX_WINDOWS
from headq_spec.results import HeadRowIn, ResultsDocument
from headq_spec.runs import HeadQConfig, InterventionConfig, QuantConfig, RunSpec, ValuePolicyConfig

RUN_PARTS = {"QuantConfig": QuantConfig, "HeadQConfig": HeadQConfig, "ValuePolicyConfig": ValuePolicyConfig,
             "InterventionConfig": InterventionConfig}
# a value that field needs beside it
NEEDS = {"target_bits": {"keep_fraction": None}, "rotation_seed": {"rotation": "hadamard"}}
# bit widths only an engine format has (the "int" format takes SUPPORTED_BITS): the format beside them
FORMAT_FOR_BITS = {5: {"format": "q5_0", "axis": "per_token"}}


def _needs(name: str, value: Any) -> dict[str, Any]:
    """The values a field set to ``value`` needs beside it."""
    return {**NEEDS.get(name, {}), **(FORMAT_FOR_BITS.get(value, {}) if name == "bits" else {})}


def _edges(schema: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """Values a field's schema allows at its edges, and values just beyond them."""
    schema = next((s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"), schema)
    if "enum" in schema:
        enum = schema["enum"]
        return enum, [v for v in range(min(enum) - 1, max(enum) + 2) if v not in enum]
    low, high = schema["minimum"], schema["maximum"]
    step = 1 if schema["type"] == "integer" else 0.5
    beyond = [low - step, high + step] + ([math.nan, math.inf] if schema["type"] == "number" else [])
    return [low, high], beyond


def _bounded_fields() -> list[tuple[str, str, dict[str, Any]]]:
    """(dataclass, field, schema) of each numeric run field whose schema states an enum or a range."""
    defs = JobSpec.model_json_schema()["$defs"]
    fields = [(part, name, schema, json.dumps(schema)) for part in RUN_PARTS
              for name, schema in defs[part]["properties"].items()]
    return [(part, name, schema) for part, name, schema, text in fields
            if ('"integer"' in text or '"number"' in text) and ("enum" in schema or "maximum" in text)]


def test_every_run_field_is_bounded_in_the_schema() -> None:
    names = {(part, name) for part, name, _ in _bounded_fields()}
    assert names >= {("QuantConfig", "bits"), ("QuantConfig", "group_size"), ("QuantConfig", "residual"),
                     ("HeadQConfig", "rank"), ("HeadQConfig", "seed"), ("ValuePolicyConfig", "target_bits"),
                     ("ValuePolicyConfig", "keep_fraction"), ("InterventionConfig", "dims")}


@pytest.mark.parametrize(("part", "name", "schema"), _bounded_fields(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_schema_bounds_are_the_dataclass_rules(part: str, name: str, schema: dict[str, Any]) -> None:
    klass, allowed, beyond = RUN_PARTS[part], *_edges(schema)
    for value in allowed:
        klass(**{**_needs(name, value), name: value})
    for value in beyond:
        with pytest.raises(ValueError, match=name):
            klass(**{**_needs(name, value), name: value})


def test_target_bits_lies_between_the_value_bits_and_high_bits() -> None:
    value = QuantConfig(bits=2, axis="per_token")
    policy = ValuePolicyConfig(keep_fraction=None, target_bits=3.0, high_bits=8)
    RunSpec("v", value=value, value_policy=policy)
    for bits, target, field in ((2, 1.5, "value_policy.target_bits"), (2, 9.0, "value_policy.target_bits"),
                                (8, 8.0, "value_policy.high_bits")):
        with pytest.raises(ValueError, match=field):
            RunSpec("v", value=QuantConfig(bits=bits, axis="per_token"),
                    value_policy=ValuePolicyConfig(keep_fraction=None, target_bits=target, high_bits=8))


def _job(runs: list[dict[str, Any]] | None = None, **top: Any) -> dict[str, Any]:
    runs = runs or [{"name": "k2", "key": {}}]
    return {"kind": "evaluation", "model": {"id": "org/m"}, "runs": runs, **top}


def _refused(body: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(body)
    errors = field_errors(info.value.errors())
    json.dumps(errors, ensure_ascii=False).encode("utf-8")  # the 422 answer can be sent
    return errors


@pytest.mark.parametrize(("body", "field"), [
    (_job(dataset={"max_tokens": MAX_TOKENS + 1}), "dataset.max_tokens"),
    (_job(dataset={"head_windows": MAX_WINDOWS + 1}), "dataset.head_windows"),
    (_job(dataset={"window": MAX_WINDOW + 1}), "dataset.window"),
    (_job(seed=MAX_SEED + 1), "seed"),
    (_job([{"name": "x", "extra": {"a": [1.0, math.nan]}}]), "runs.0.extra.a.1"),
    (_job([{"name": "x", "extra": {"a": {"b": -math.inf}}}]), "runs.0.extra.a.b"),
    (_job([{"name": "x", "value": {"axis": "per_token"},
            "value_policy": {"keep_fraction": None, "target_bits": math.inf}}]),
     "runs.0.value_policy.target_bits"),
    (_job([{"name": "x", "key": {"group_size": 10**12}}]), "runs.0.key.group_size"),
])
def test_numbers_are_finite_and_bounded(body: dict[str, Any], field: str) -> None:
    assert field in [e["field"] for e in _refused(body)]


def test_the_limits_themselves_are_accepted() -> None:
    spec = JobSpec.model_validate(_job(
        [{"name": "x", "key": {"group_size": MAX_WINDOW, "residual": MAX_WINDOW},
          "headq": {"rank": MAX_RANK, "seed": MAX_SEED}}],
        calibration_job="c", seed=MAX_SEED,
        dataset={"window": MAX_WINDOW, "max_tokens": MAX_TOKENS, "head_windows": MAX_WINDOWS}))
    assert spec.dataset.max_tokens == MAX_TOKENS and spec.runs[0].key == QuantConfig(group_size=MAX_WINDOW,
                                                                                    residual=MAX_WINDOW)


@pytest.mark.parametrize(("body", "field"), [
    (_job([{"name": "\ud83d"}]), "runs.0.name"),
    (_job(label="ok \udc00"), "label"),
    (_job([{"name": "x", "extra": {"note": ["fine", "\ud83d"]}}]), "runs.0.extra.note.1"),
    (_job([{"name": "x", "extra": {"\ud83d": 1}}]), "runs.0.extra.\\ud83d"),
    (_job(dataset={"\ud83d": 1}), "dataset.\\ud83d"),
])
def test_lone_surrogates_are_refused_by_path(body: dict[str, Any], field: str) -> None:
    assert [e["field"] for e in _refused(body)] == [field]


def test_results_document_text_and_counts() -> None:
    row = {"run": "k2", "layer": 0, "head": 0, "kv_head": 0}
    with pytest.raises(ValidationError, match="lone surrogate"):
        HeadRowIn.model_validate({**row, "note": "\ud83d"})  # rows are also validated apart
    document = {"schema_version": 1, "kind": "evaluation", "model": {"id": "m"}}
    for extra, field in (({"dataset": {"tokens": MAX_TOKENS + 1}}, "dataset.tokens"),
                         ({"runs": [{"name": "k2", "perplexity_se": "x"}]}, "runs.0.perplexity_se"),
                         ({"runs": [{"name": "k2", "perplexity_ci": [1.0]}]}, "runs.0.perplexity_ci"),
                         ({"model": {"id": "\ud83d"}}, "model.id")):
        with pytest.raises(ValidationError) as info:
            ResultsDocument.model_validate({**document, **extra})
        assert field in [e["field"] for e in field_errors(info.value.errors())]


def test_an_error_naming_unencodable_text_can_be_sent() -> None:
    [error] = field_errors([{"loc": ("body", "bundle", "\ud83d"), "msg": "Extra inputs: '\udc00'"}])
    assert error == {"field": "\\ud83d", "message": "Extra inputs: '\\udc00'"}
