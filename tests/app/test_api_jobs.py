"""The jobs endpoints on SQLite and PostgreSQL: submit, validation (every field named), calibration
references, idempotency, listing with filters and pages, 404s and cancel semantics."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.main import create_app
from headq_jobs import store

from .conftest import EVAL_SPEC, make_settings

API = "/api/v1"
JSON = {"Content-Type": "application/json"}  # a tokenless server's writes need it (app/api/security.py)


def _spec(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(EVAL_SPEC)
    spec.update(changes)
    return spec


def _post(api: TestClient, spec: dict[str, Any], **kw: Any) -> Any:
    return api.post(f"{API}/jobs", json=spec, **kw)


def test_submit_get_and_stored_spec(api: TestClient) -> None:
    response = _post(api, _spec(label="first"))
    assert response.status_code == 201, response.text
    job = response.json()
    assert (job["status"], job["kind"], job["label"], job["model_id"]) == ("queued", "evaluation", "first",
                                                                            "org/model")
    assert job["progress"] == 0.0 and job["attempts"] == 0 and job["created_at"].endswith("Z")
    assert job["spec"]["runs"] == [{"name": "k2", "key": {"bits": 2, "axis": "per_channel", "group_size": 32,
                                                          "residual": 0}}]
    assert api.get(f"{API}/jobs/{job['id']}").json() == job


BAD_SPECS: list[tuple[str, dict[str, Any]]] = [
    ("kind", {"kind": "training"}),
    ("model", {"model": None}),
    ("model.id", {"model": {"id": ""}}),
    ("model.id", {"model": {"id": "builtin:gpt9"}}),
    ("model.dtype", {"model": {"id": "a/b", "dtype": "int8"}}),
    ("model.device", {"model": {"id": "a/b", "device": "tpu"}}),
    ("model.weights", {"model": {"id": "a/b", "weights": "pytorch_bin"}}),
    ("model.gguf_file", {"model": {"id": "a/b", "gguf_file": "model.bin"}}),
    ("model.use_safetensors", {"model": {"id": "a/b", "use_safetensors": False}}),
    ("model.trust_remote_code", {"model": {"id": "a/b", "trust_remote_code": True}}),
    ("trust_remote_code", {"trust_remote_code": False}),
    ("dataset.window", {"dataset": {"window": 1}}),
    ("dataset.files", {"dataset": {"source": "files"}}),
    ("dataset.source", {"dataset": {"source": "ftp"}}),
    ("seed", {"seed": -1}),
    ("colour", {"colour": "red"}),
    ("runs", {"runs": []}),
    ("runs", {"runs": [{"name": "a", "key": {"bits": 2}}, {"name": "a", "key": {"bits": 4}}]}),
    ("runs.0.name", {"runs": [{"name": "", "key": {"bits": 2}}]}),
    ("runs.0.key.bits", {"runs": [{"name": "a", "key": {"bits": 5}}]}),
    ("runs.0.key.bits", {"runs": [{"name": "a", "key": {"bits": "two"}}]}),  # a type error too
    ("runs.0.key.axis", {"runs": [{"name": "a", "key": {"axis": "diagonal"}}]}),
    ("runs.0.key.group_size", {"runs": [{"name": "a", "key": {"group_size": 0}}]}),
    ("runs.0.value.residual", {"runs": [{"name": "a", "value": {"residual": -3}}]}),
    ("runs.0.headq", {"runs": [{"name": "a", "headq": {"rank": 2}}], "calibration_job": "x"}),
    ("runs.0.headq.rank", {"runs": [{"name": "a", "key": {}, "headq": {"rank": 0}}], "calibration_job": "x"}),
    ("runs.0.headq.side_bits", {"runs": [{"name": "a", "key": {}, "headq": {"side_bits": 3}}],
                                "calibration_job": "x"}),
    ("runs.0.value_policy.keep_fraction", {"runs": [{"name": "a", "value": {}, "value_policy":
                                                     {"keep_fraction": 2.0}}]}),
    ("runs.0.intervention.subspace", {"runs": [{"name": "a", "key": {}, "intervention": {"subspace": "up"}}],
                                      "calibration_job": "x"}),
    ("runs.0.oops", {"runs": [{"name": "a", "oops": 1}]}),
    ("calibration_job", {"runs": [{"name": "a", "key": {}, "headq": {}}]}),
    ("calibration", {"calibration": {"rank": 4}}),
    ("model.id", {"model": {"id": "/etc/models/x"}}),
    ("model.id", {"model": {"id": "../../secrets"}}),
]


@pytest.mark.parametrize(("field", "change"), BAD_SPECS,
                         ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_SPECS)])
def test_invalid_specs_name_the_field(shared_api: TestClient, field: str, change: dict[str, Any]) -> None:
    before = shared_api.get(f"{API}/jobs").json()["total"]
    response = _post(shared_api, _spec(**change))
    assert response.status_code == 422, response.text
    body = response.json()
    assert field in [e["field"] for e in body["errors"]], body
    assert field in body["detail"]
    assert shared_api.get(f"{API}/jobs").json()["total"] == before


def test_calibration_job_must_run_on_a_calibration_of_the_same_model(api: TestClient) -> None:
    cal = _post(api, {"kind": "calibration", "model": {"id": "org/model"}, "calibration": {"rank": 8}}).json()
    other = _post(api, {"kind": "calibration", "model": {"id": "org/other"}}).json()
    evaluation = _post(api, _spec()).json()
    runs = [{"name": "hq", "key": {"bits": 2}, "headq": {"rank": 8}}]
    for job_id, words in (("nope", "no job"), (evaluation["id"], "not a calibration"),
                          (other["id"], "org/other")):
        response = _post(api, _spec(runs=runs, calibration_job=job_id))
        assert response.status_code == 422 and "calibration_job" in response.json()["detail"]
        assert words in response.json()["detail"]
    too_big = _post(api, _spec(runs=[{**runs[0], "headq": {"rank": 9}}], calibration_job=cal["id"]))
    assert too_big.status_code == 422 and too_big.json()["errors"][0]["field"] == "runs.0.headq.rank"
    ok = _post(api, _spec(runs=runs, calibration_job=cal["id"]))
    assert ok.status_code == 201 and ok.json()["spec"]["calibration_job"] == cal["id"]


def test_local_paths_only_under_allowed_dirs(clean_engine: Engine, database_url: str,
                                                   tmp_path: Path) -> None:
    allowed = tmp_path / "models"
    settings = make_settings(database_url, allowed_model_dirs=[allowed])
    with TestClient(create_app(settings)) as api:
        assert _post(api, _spec(model={"id": str(allowed / "tiny")})).status_code == 201
        sneaky = _post(api, _spec(model={"id": str(allowed / ".." / "elsewhere")}))
        assert sneaky.status_code == 422 and sneaky.json()["errors"][0]["field"] == "model.id"
        assert _post(api, _spec(model={"id": str(tmp_path / "other")})).status_code == 422
        assert _post(api, _spec(model={"id": "builtin:smollm2-135m"})).status_code == 201

    data = tmp_path / "texts"
    settings = make_settings(database_url, allowed_data_dirs=[data])
    with TestClient(create_app(settings)) as api:
        inside = {"source": "files", "files": [str(data / "a.txt"), str(data / "sub" / "b.txt")]}
        assert _post(api, _spec(dataset=inside)).status_code == 201
        leaky = {"source": "files", "files": [str(data / "a.txt"), "/etc/passwd"]}
        outside = _post(api, _spec(dataset=leaky))
        assert outside.status_code == 422 and outside.json()["errors"][0]["field"] == "dataset.files.1"


def test_idempotency_key(api: TestClient) -> None:
    first = _post(api, _spec(), headers={"Idempotency-Key": "abc"})
    again = _post(api, _spec(), headers={"Idempotency-Key": "abc"})
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.headers["Idempotent-Replay"] == "true"
    changed = _post(api, _spec(seed=7), headers={"Idempotency-Key": "abc"})
    assert changed.status_code == 409 and "abc" in changed.json()["detail"]
    assert _post(api, _spec(), headers={"Idempotency-Key": "other"}).json()["id"] != first.json()["id"]
    assert api.get(f"{API}/jobs").json()["total"] == 2


def test_list_filters_and_pagination(api: TestClient, clean_engine: Engine) -> None:
    ids = [_post(api, _spec(model={"id": f"org/m{i % 2}"})).json()["id"] for i in range(5)]
    ids.append(_post(api, {"kind": "calibration", "model": {"id": "org/m0"}}).json()["id"])
    with store.make_session_factory(clean_engine)() as s:
        store.mark_running(s, ids[0], "w")
    page = api.get(f"{API}/jobs", params={"limit": 4}).json()
    assert page["total"] == 6 and len(page["items"]) == 4
    rest = api.get(f"{API}/jobs", params={"limit": 4, "offset": 4}).json()["items"]
    assert sorted(j["id"] for j in page["items"] + rest) == sorted(ids)
    assert [j["created_at"] for j in page["items"]] == sorted((j["created_at"] for j in page["items"]),
                                                              reverse=True)

    def ids_of(**params: Any) -> set[str]:
        return {j["id"] for j in api.get(f"{API}/jobs", params={**params, "limit": 200}).json()["items"]}

    assert ids_of(model="org/m0") == {ids[0], ids[2], ids[4], ids[5]}
    assert ids_of(kind="calibration") == {ids[5]}
    assert ids_of(status="running") == {ids[0]}
    assert ids_of(status="queued", model="org/m1", kind="evaluation") == {ids[1], ids[3]}
    bad_params = (({"limit": 201}, "limit"), ({"offset": -1}, "offset"), ({"status": "done"}, "status"),
                  ({"kind": "x"}, "kind"))
    for params, field in bad_params:
        bad = api.get(f"{API}/jobs", params=params)
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == field


def test_unknown_ids_are_404(api: TestClient) -> None:
    for method, path in (("get", "/jobs/nope"), ("post", "/jobs/nope/cancel"), ("get", "/jobs/nope/results")):
        response = getattr(api, method)(f"{API}{path}", headers=JSON)
        assert response.status_code == 404 and "nope" in response.json()["detail"]


def test_cancel_semantics(api: TestClient, clean_engine: Engine) -> None:
    queued, running = (_post(api, _spec()).json()["id"] for _ in range(2))
    with store.make_session_factory(clean_engine)() as s:
        store.mark_running(s, running, "w")
    done = api.post(f"{API}/jobs/{queued}/cancel", headers=JSON)
    assert done.status_code == 202 and done.json()["status"] == "cancelled" and done.json()["finished_at"]
    asked = api.post(f"{API}/jobs/{running}/cancel", headers=JSON).json()
    assert asked["status"] == "running" and asked["cancel_requested"] is True
    with store.make_session_factory(clean_engine)() as s:
        assert store.is_cancel_requested(s, running)
        store.finish(s, running, "cancelled")
    for job_id in (queued, running):
        again = api.post(f"{API}/jobs/{job_id}/cancel", headers=JSON)
        assert again.status_code == 409 and "cancelled" in again.json()["detail"]


def test_idempotent_replay_answers_as_the_first_time(api: TestClient) -> None:
    cal = _post(api, {"kind": "calibration", "model": {"id": "org/model"}}).json()
    spec = _spec(runs=[{"name": "hq", "key": {"bits": 2}, "headq": {"rank": 4}}], calibration_job=cal["id"])
    first = _post(api, spec, headers={"Idempotency-Key": "retry-me"})
    assert first.status_code == 201
    api.post(f"{API}/jobs/{cal['id']}/cancel", headers=JSON)
    assert _post(api, spec).status_code == 422  # a new submission sees the cancelled calibration
    again = _post(api, spec, headers={"Idempotency-Key": "retry-me"})
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
