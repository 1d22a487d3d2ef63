"""Retrieval jobs (issue 16) through the REST API and the ``headq retrieve`` command: submit and
read, bad input answered 422 naming the field, a real results document of the pipeline (tiny saved
model) stored and read back with its per-head needle rows."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from headq_cli.main import main
from tests.models.tiny import save_tiny
from workers.pipeline import execute

API = "/api/v1"
K2 = {"bits": 2, "axis": "per_channel", "group_size": 4, "residual": 0}
RUNS = [{"name": "dense"}, {"name": "k2", "key": K2}]


def _spec(**changes: Any) -> dict[str, Any]:
    return {"kind": "retrieval", "model": {"id": "org/model"}, "runs": RUNS,
            "retrieval": {"lengths": [256, 512], "depths": [0, 50, 100]}, **changes}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny"
    save_tiny(folder, "llama")
    return folder


@pytest.fixture(scope="module")
def document(model_dir) -> dict[str, Any]:
    spec = {"kind": "retrieval", "model": {"id": str(model_dir), "device": "cpu"},
            "dataset": {"window": 16, "max_tokens": 2000}, "runs": RUNS,
            "retrieval": {"lengths": [256], "depths": [0, 100], "new_tokens": 2}}
    doc, _ = execute(spec, calibration_blob=None)
    return doc


def test_submit_and_read_a_retrieval_job(api: TestClient) -> None:
    response = api.post(f"{API}/jobs", json=_spec(label="needle"))
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["kind"] == "retrieval" and job["spec"]["retrieval"]["lengths"] == [256, 512]
    assert job["spec"]["retrieval"]["new_tokens"] == 12 and job["spec"]["retrieval"]["template"] == "auto"
    assert api.get(f"{API}/jobs/{job['id']}").json()["kind"] == "retrieval"
    listed = api.get(f"{API}/jobs", params={"kind": "retrieval"}).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]
    assert api.get(f"{API}/jobs", params={"kind": "evaluation"}).json()["total"] == 0


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"retrieval": {"lengths": [10]}}, "retrieval.lengths", "must lie in [64"),
    ({"retrieval": {"lengths": [256, 256]}}, "retrieval.lengths", "duplicate lengths"),
    ({"retrieval": {"depths": [50, 120]}}, "retrieval.depths", "percentage in [0, 100]"),
    ({"model": {"id": "builtin:smollm2-135m"}, "retrieval": {"lengths": [4096, 9000]}}, "retrieval.lengths.1",
     "exceed the maximum context of builtin:smollm2-135m (8192)"),
    ({"dataset": {"window": 512, "max_tokens": 1000}, "retrieval": {"lengths": [2048]}},
     "retrieval.lengths.0", "dataset.max_tokens = 1000"),
    ({"runs": []}, "runs", "needs at least one run"),
    ({"runs": [{"name": "iv", "key": K2, "intervention": {"dims": 2}}], "calibration_job": "x"},
     "runs.0.intervention", "stores none"),
    ({"runs": [{"name": "kp", "key": K2, "headq": {"rank": 2, "basis": "key_pca"}}]}, "runs.0.headq.basis",
     "key_pca"),
    ({"runs": [{"name": "a2", "key": K2, "value": {"bits": 2, "axis": "per_token", "group_size": 4},
                "value_policy": {"mode": "oracle"}}]}, "runs.0.value_policy.mode", "online"),
    ({"runs": [{"name": "h", "key": K2, "headq": {"rank": 2}}]}, "calibration_job", "required"),
    ({"kind": "evaluation"}, "retrieval", "only a retrieval job"),
])
def test_bad_retrieval_input_is_422_naming_the_field(api: TestClient, change, field, words) -> None:
    response = api.post(f"{API}/jobs", json=_spec(**change))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert field in detail and words in detail, detail
    assert api.get(f"{API}/jobs").json()["total"] == 0  # nothing written


def test_results_of_a_retrieval_job_round_trip(api: TestClient, document) -> None:
    imported = api.post(f"{API}/results/import", json=document)
    assert imported.status_code == 201, imported.text
    job = imported.json()["items"][0]
    assert job["kind"] == "retrieval"
    back = api.get(f"{API}/jobs/{job['id']}/results").json()
    assert back["retrieval"] == document["retrieval"] and back["runs"] == document["runs"]
    stored = [{k: v for k, v in row.items() if v is not None} for row in back["heads"]]  # + null metrics
    assert stored == document["heads"] and len(stored) == 2 * 2 * 4  # prompts x layers x heads
    table = api.get(f"{API}/jobs/{job['id']}/results", params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(table.text)))
    assert len(rows) == len(document["heads"]) and float(rows[0]["needle_mass_lost"]) == pytest.approx(
        document["heads"][0]["needle_mass_lost"])


def test_headq_retrieve_runs_locally(model_dir, tmp_path, capsys) -> None:
    out, table = tmp_path / "doc.json", tmp_path / "heads.csv"
    code = main(["retrieve", "--model", str(model_dir), "--device", "cpu", "--runs", "k-only", "--group", "4",
                 "--lengths", "256", "--depths", "0", "100", "--new-tokens", "2", "--max-tokens", "2000",
                 "--out", str(out), "--csv", str(table)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "256 tok" in printed and "dense" in printed and "k2" in printed
    doc = json.loads(out.read_text())
    assert doc["kind"] == "retrieval" and doc["retrieval"]["depths"] == [0.0, 100.0]
    assert len(list(csv.DictReader(table.open()))) == len(doc["heads"]) == 2 * 2 * 4
    assert main(["retrieve", "--model", str(model_dir), "--runs", "controls", "--lengths", "256"]) == 2
    assert "key_pca" in capsys.readouterr().err
    assert main(["retrieve", "--model", str(model_dir), "--runs", "headq", "--lengths", "256"]) == 2
    assert "--calibration" in capsys.readouterr().err
