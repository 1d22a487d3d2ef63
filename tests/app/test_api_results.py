"""Results through the API on SQLite and PostgreSQL: import a generated document and read it back as
JSON, CSV and Parquet (checked value by value against the document; value metrics of K-only runs
empty), bundles with specs and
artifacts, the calibrations list, and the 409 / 422 answers."""

from __future__ import annotations

import base64
import csv
import io
import json
import math

import pyarrow.parquet as pq
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.api.tables import VALUE_METRICS
from headq_jobs import store

from .artifactgen import make_artifact
from .conftest import EVAL_SPEC
from .resultgen import METRICS, make_document

API = "/api/v1"


def _import(api: TestClient, body: dict) -> list[dict]:
    response = api.post(f"{API}/results/import", json=body)
    assert response.status_code == 201, response.text
    return response.json()["items"]


def test_document_round_trip_json_csv_parquet(api: TestClient) -> None:
    doc = make_document(seed=11)
    doc["runs"][1]["spec"]["value"] = {"bits": 2, "axis": "per_token", "group_size": 32, "residual": 0}
    k_only = {r["name"] for r in doc["runs"] if "value" not in r["spec"]}
    exported = [{**h, **dict.fromkeys(VALUE_METRICS)} if h["run"] in k_only else h for h in doc["heads"]]
    [job] = _import(api, doc)
    assert (job["status"], job["kind"], job["model_id"], job["progress"]) == ("succeeded", "evaluation",
                                                                              doc["model"]["id"], 1.0)
    assert [r["name"] for r in job["spec"]["runs"]] == ["k2", "k2_headq"]
    assert api.get(f"{API}/jobs/{job['id']}/results").json() == doc

    text = api.get(f"{API}/jobs/{job['id']}/results", params={"format": "csv"})
    assert text.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text.text)))
    assert len(rows) == len(doc["heads"])
    for row, head in zip(rows, doc["heads"], strict=True):
        assert (row["run"], int(row["layer"]), int(row["head"]), int(row["kv_head"])) == (
            head["run"], head["layer"], head["head"], head["kv_head"])
        for metric in METRICS:
            if head["run"] in k_only and metric in VALUE_METRICS:  # does not apply: empty, not 0.0
                assert row[metric] == ""
            else:
                assert math.isclose(float(row[metric]), head[metric], rel_tol=1e-12)

    blob = api.get(f"{API}/jobs/{job['id']}/results", params={"format": "parquet"}).content
    table = pq.read_table(io.BytesIO(blob)).to_pylist()
    assert table == exported


def test_bundle_with_spec_and_artifact(api: TestClient, clean_engine: Engine) -> None:
    cal_doc = make_document(kind="calibration", seed=2)
    artifact = make_artifact()
    cal_spec = {"kind": "calibration", "model": {"id": cal_doc["model"]["id"]}, "label": "cal"}
    bundle = {"jobs": [{"spec": cal_spec, "results": cal_doc,
                        "artifact_base64": base64.b64encode(artifact).decode()},
                       {"results": make_document(seed=3)}]}
    cal, evaluation = _import(api, bundle)
    assert cal["label"] == "cal" and cal["spec"]["calibration"] == {"rank": 64}
    with store.make_session_factory(clean_engine)() as s:
        assert store.load_calibration_artifact(s, cal["id"]) == artifact
    assert [j["id"] for j in api.get(f"{API}/calibrations").json()["items"]] == [cal["id"]]
    assert api.get(f"{API}/calibrations", params={"model": "x/y"}).json()["items"] == []
    assert api.get(f"{API}/jobs/{evaluation['id']}/results").json()["heads"] == make_document(seed=3)["heads"]


def test_non_finite_numbers_come_back_as_null(api: TestClient) -> None:
    doc = make_document(seed=4)
    raw = json.dumps(doc).replace(str(doc["heads"][0]["fisher"]), "NaN", 1)
    response = api.post(f"{API}/results/import", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    back = api.get(f"{API}/jobs/{response.json()['items'][0]['id']}/results").json()
    assert back["heads"][0]["fisher"] is None and back["heads"][1] == doc["heads"][1]


def test_results_of_unfinished_job_is_409(api: TestClient) -> None:
    job = api.post(f"{API}/jobs", json=EVAL_SPEC).json()
    response = api.get(f"{API}/jobs/{job['id']}/results")
    assert response.status_code == 409 and "queued" in response.json()["detail"]
    bad = api.get(f"{API}/jobs/{job['id']}/results", params={"format": "xlsx"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "format"


def test_malformed_imports_name_the_field(api: TestClient) -> None:
    doc = make_document()
    cases = [({**doc, "schema_version": 2}, "schema_version"), ({**doc, "kind": "x"}, "kind"),
             ({k: v for k, v in doc.items() if k != "model"}, "model"),
             ({**doc, "heads": [{**doc["heads"][0], "layer": -1}]}, "heads.0.layer"),
             ({**doc, "heads": [{**doc["heads"][0], "attn_kl": "high"}]}, "heads.0.attn_kl"),
             ({"jobs": []}, "jobs"),
             ({"jobs": [{"results": doc, "artifact_base64": "***"}]}, "jobs.0.artifact_base64"),
             ({"jobs": [{"results": doc, "spec": {**EVAL_SPEC, "kind": "calibration", "runs": []}}]},
              "jobs.0.spec"),
             ({"jobs": [{"results": doc, "spec": {**EVAL_SPEC, "trust_remote_code": True}}]},
              "jobs.0.spec.trust_remote_code")]
    for body, field in cases:
        response = api.post(f"{API}/results/import", json=body)
        assert response.status_code == 422, (field, response.text)
        assert field in [e["field"] for e in response.json()["errors"]], (field, response.json())
    assert api.get(f"{API}/jobs").json()["total"] == 0


def test_run_rows_as_csv_and_parquet_carry_standard_errors_and_intervals(api: TestClient) -> None:
    doc = make_document(seed=12)
    doc["runs"][0].update(perplexity_se=0.5, perplexity_ci=[29.0, 31.0])
    doc["runs"][1].update(excess_removed_se=0.05, excess_removed_ci=[0.4, 0.6])
    [job] = _import(api, doc)
    text = api.get(f"{API}/jobs/{job['id']}/results", params={"format": "csv", "table": "runs"})
    assert 'filename="' + job["id"] + '-runs.csv"' in text.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(text.text)))
    assert [r["run"] for r in rows] == ["k2", "k2_headq"]
    assert (float(rows[0]["perplexity_se"]), float(rows[0]["perplexity_ci_low"]),
            float(rows[0]["perplexity_ci_high"])) == (0.5, 29.0, 31.0)
    assert math.isclose(float(rows[0]["perplexity"]), doc["runs"][0]["perplexity"], rel_tol=1e-12)
    assert rows[0]["excess_removed_se"] == "" and float(rows[1]["excess_removed_ci_high"]) == 0.6
    blob = api.get(f"{API}/jobs/{job['id']}/results", params={"format": "parquet", "table": "runs"}).content
    table = pq.read_table(io.BytesIO(blob)).to_pylist()
    assert table[1]["excess_removed_ci_low"] == 0.4 and table[1]["key_bits"] == 3.0
    assert api.get(f"{API}/jobs/{job['id']}/results", params={"table": "cells"}).status_code == 422
