"""Inputs the API must refuse before anything is written, and exports that must work for anything it
accepted, through the real app on SQLite and PostgreSQL: lone UTF-16 surrogates in a spec or an import,
non-finite and unbounded numbers, mixed-type extras in head rows."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from headq_spec.limits import MAX_TOKENS, MAX_WINDOW, MAX_WINDOWS

from .conftest import EVAL_SPEC
from .resultgen import make_document

API = "/api/v1"


def _post(api: TestClient, path: str, body: Any) -> Any:
    """POST ``body`` (JSON text, or a value written as Python's ``json`` writes it: lone surrogates
    escaped as ``\\ud83d``, NaN and Infinity spelled out)."""
    text = body if isinstance(body, str) else json.dumps(body)
    return api.post(f"{API}{path}", content=text, headers={"Content-Type": "application/json"})


def _nothing_written(api: TestClient) -> None:
    listing = api.get(f"{API}/jobs")
    assert listing.status_code == 200 and listing.json() == {"items": [], "total": 0}
    assert api.get(f"{API}/calibrations").json() == {"items": []}


def _run(**fields: Any) -> dict[str, Any]:
    return {**EVAL_SPEC, "runs": [{"name": "k2", "key": {"bits": 2}, **fields}]}


def _budget(target_bits: Any) -> dict[str, Any]:
    """A spec whose run keeps 2-bit values with an A² budget of ``target_bits``."""
    return _run(value={"bits": 2, "axis": "per_token"},
                value_policy={"keep_fraction": None, "target_bits": target_bits})


@pytest.mark.parametrize(("body", "field"), [
    ({**EVAL_SPEC, "runs": [{"name": "\ud83d", "key": {"bits": 2}}]}, "runs.0.name"),
    (_run(extra={"note": "\ud83d"}), "runs.0.extra.note"),
    (_run(extra={"\udc00": 1}), "runs.0.extra.\\udc00"),
    ({**EVAL_SPEC, "label": "a\ud83db"}, "label"),
])
def test_lone_surrogate_in_a_spec_is_refused_before_anything_is_written(
        api: TestClient, body: dict[str, Any], field: str) -> None:
    response = _post(api, "/jobs", body)
    assert response.status_code == 422, response.text
    _nothing_written(api)
    assert [e["field"] for e in response.json()["errors"]] == [field]
    job = _post(api, "/jobs", EVAL_SPEC).json()  # the job endpoints still answer
    assert api.get(f"{API}/jobs/{job['id']}").status_code == 200
    cancel = api.post(f"{API}/jobs/{job['id']}/cancel", headers={"Content-Type": "application/json"})
    assert cancel.status_code == 202 and cancel.json()["status"] == "cancelled"
    assert api.get(f"{API}/jobs").json()["total"] == 1


def _with(document: dict[str, Any], change: Any) -> dict[str, Any]:
    change(document)
    return document


@pytest.mark.parametrize(("body", "field"), [
    (_with(make_document(), lambda d: d["heads"][0].update(run="\ud83d")), "heads.0.run"),
    (_with(make_document(), lambda d: d["heads"][1].update(note=["\udc00"])), "heads.1.note.0"),
    (_with(make_document(), lambda d: d["model"].update(id="m\ud83d")), "model.id"),
    (_with(make_document(), lambda d: d["runs"][0].update(extra={"\ud83d": 1})), "runs.0.extra.\\ud83d"),
    ({"jobs": [{"results": make_document(), "spec": {**EVAL_SPEC, "label": "\ud83d"}}]}, "jobs.0.spec.label"),
])
def test_lone_surrogate_in_an_import_is_refused(api: TestClient, body: dict[str, Any], field: str) -> None:
    response = _post(api, "/results/import", body)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]], response.json()
    _nothing_written(api)


@pytest.mark.parametrize(("body", "field"), [
    (json.dumps(_budget(3)).replace('"target_bits": 3', '"target_bits": 1e999'),
     "runs.0.value_policy.target_bits"),
    (_budget(math.nan), "runs.0.value_policy.target_bits"),
    (_budget(12), "runs.0.value_policy.target_bits"),
    (_run(extra={"x": math.nan}), "runs.0.extra.x"),
    (_run(extra={"x": [1, math.inf]}), "runs.0.extra.x.1"),
    (_run(extra={"x": {"y": -math.inf}}), "runs.0.extra.x.y"),
    ({**EVAL_SPEC, "runs": [{"name": "k2", "key": {"group_size": 10**12}}]}, "runs.0.key.group_size"),
    ({**EVAL_SPEC, "runs": [{"name": "k2", "key": {"residual": 10**15}}]}, "runs.0.key.residual"),
    ({**EVAL_SPEC, "dataset": {"max_tokens": 10**18}}, "dataset.max_tokens"),
    ({**EVAL_SPEC, "dataset": {"head_windows": 10**18}}, "dataset.head_windows"),
])
def test_numbers_must_be_finite_and_bounded(api: TestClient, body: Any, field: str) -> None:
    response = _post(api, "/jobs", body)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]
    _nothing_written(api)


def test_numbers_at_the_limits_are_accepted(api: TestClient) -> None:
    body = {**EVAL_SPEC, "runs": [{"name": "k2", "key": {"group_size": MAX_WINDOW, "residual": MAX_WINDOW}}],
            "dataset": {"window": MAX_WINDOW, "max_tokens": MAX_TOKENS, "head_windows": MAX_WINDOWS}}
    response = _post(api, "/jobs", body)
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["dataset"]["max_tokens"] == MAX_TOKENS


MIXED = {"mixed": ["a", 3, True, {"k": [1]}], "nested": [[1, 2], {"a": None}, [], {}],
         "huge": [2**64, 1, 2, 3], "flag": [True, False, None, True], "count": [1, 2.5, None, 4],
         "note": ["x", None, "y", "z"]}


def test_head_rows_with_mixed_extras_export_as_csv_and_parquet(api: TestClient) -> None:
    document = make_document(seed=7)
    for index, head in enumerate(document["heads"][:4]):
        head.update({key: values[index] for key, values in MIXED.items()})
    [job] = _post(api, "/results/import", document).json()["items"]
    url = f"{API}/jobs/{job['id']}/results"
    text = api.get(url, params={"format": "csv"})
    blob = api.get(url, params={"format": "parquet"})
    assert text.status_code == 200 and blob.status_code == 200, (text.text, blob.text)
    rows = list(csv.DictReader(io.StringIO(text.text)))
    table = pq.read_table(io.BytesIO(blob.content)).to_pylist()
    assert len(rows) == len(table) == len(document["heads"])
    as_json = ['"a"', "3", "true", '{"k": [1]}']
    assert [r["mixed"] for r in table[:4]] == [r["mixed"] for r in rows[:4]] == as_json
    assert [r["nested"] for r in table[:4]] == ["[1, 2]", '{"a": null}', "[]", "{}"]
    assert [r["huge"] for r in table[:4]] == [str(2**64), "1", "2", "3"]
    assert [r["flag"] for r in table[:4]] == [True, False, None, True]
    assert [r["count"] for r in table[:4]] == [1.0, 2.5, None, 4.0]
    assert [r["note"] for r in table[:4]] == ["x", None, "y", "z"]
    assert table[4]["mixed"] is None and rows[4]["mixed"] == ""


@pytest.mark.parametrize(("change", "field"), [
    ({"perplexity_se": "wide"}, "runs.0.perplexity_se"),
    ({"perplexity_ci": [1.0]}, "runs.0.perplexity_ci"),
    ({"excess_removed_ci": "0.4-0.6"}, "runs.0.excess_removed_ci"),
    ({"tokens": 10**30}, "runs.0.tokens"),
])
def test_run_rows_that_no_table_can_hold_are_refused_at_import(
        api: TestClient, change: dict[str, Any], field: str) -> None:
    document = make_document(seed=8)
    document["runs"][0].update(change)
    response = _post(api, "/results/import", document)
    assert response.status_code == 422 and field in [e["field"] for e in response.json()["errors"]]
    _nothing_written(api)
