"""The API against the hardening report: no local read through a hub id or an allowed-directory
escape, 422s that never list the allowed directories, imported artifacts checked as the workers read
them, a large import that leaves the server answering, and the browser-facing guards (``Host``, the
JSON header of a tokenless server's writes) with the REST client and the dashboard still working."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.client import HeadQClient
from app.main import create_app
from headq_jobs import store
from headq_spec.artifact import FORMAT, META_NAME, TENSORS_NAME
from testkit.live_server import start_api

from .artifactgen import calibration_tensors, make_artifact, tar_of
from .conftest import EVAL_SPEC, make_settings
from .resultgen import make_document

API = "/api/v1"
JSON = {"Content-Type": "application/json"}


def _jobs(api: TestClient) -> int:
    return api.get(f"{API}/jobs").json()["total"]


def _refused(response: httpx.Response, field: str, words: str) -> str:
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["field"] == field and words in error["message"], error
    return error["message"]


def test_hf_dataset_names_are_hub_ids_never_paths(api: TestClient) -> None:
    for name in ("/etc", "/tmp/texts", "../texts", "./texts", "a/b/c", "texts/"):
        spec = {**EVAL_SPEC, "dataset": {"source": "hf", "name": name}}
        _refused(api.post(f"{API}/jobs", json=spec), "dataset.name", "not a hub dataset id")
    assert _jobs(api) == 0
    for name in ("wikitext", "Salesforce/wikitext"):
        spec = {**EVAL_SPEC, "dataset": {"source": "hf", "name": name}}
        assert api.post(f"{API}/jobs", json=spec).status_code == 201


def test_local_paths_cannot_escape_the_allowed_directories(clean_engine: Engine, database_url: str,
                                                           tmp_path: Path) -> None:
    allowed, outside, hidden = tmp_path / "allowed", tmp_path / "outside", tmp_path / "hidden-dir"
    for folder in (allowed / "models" / "tiny", outside / "model", hidden):
        folder.mkdir(parents=True)
    (outside / "secret.txt").write_text("secret")
    (allowed / "notes.txt").write_text("text")
    (allowed / "escape").symlink_to(outside)  # a folder inside that leads outside
    (allowed / "leak.txt").symlink_to(outside / "secret.txt")
    (tmp_path / "via-link").symlink_to(allowed)  # the allowed folder reached through a link
    settings = make_settings(database_url, allowed_model_dirs=[allowed, hidden],
                             allowed_data_dirs=[allowed, hidden])

    def model(model_id: str) -> dict[str, Any]:
        return {**EVAL_SPEC, "model": {"id": model_id}}

    def files(*names: Path | str) -> dict[str, Any]:
        return {**EVAL_SPEC, "dataset": {"source": "files", "files": [str(n) for n in names]}}

    with TestClient(create_app(settings)) as api:
        refused = [(model(str(allowed / ".." / "outside" / "model")), "model.id"),
                   (model(str(allowed / "escape" / "model")), "model.id"),
                   (model(str(outside / "model")), "model.id"),
                   (files(allowed / "leak.txt"), "dataset.files.0"),
                   (files(allowed / "notes.txt", allowed / "escape" / "secret.txt"), "dataset.files.1"),
                   (files(allowed / "le*.txt"), "dataset.files.0"),
                   (files(allowed / "**" / "*.txt"), "dataset.files.0"),
                   (files("/etc/passwd"), "dataset.files.0")]
        for spec, field in refused:
            message = _refused(api.post(f"{API}/jobs", json=spec), field, "not in an allowed directory")
            assert "hidden-dir" not in message  # the answer never lists the allowed directories
        assert _jobs(api) == 0
        accepted = [model(str(allowed / "models" / "tiny")), model(str(tmp_path / "via-link" / "models")),
                    files(allowed / "notes.txt"), files(allowed / "no*.txt"), files(allowed / "later.txt")]
        for spec in accepted:
            assert api.post(f"{API}/jobs", json=spec).status_code == 201, spec


def _bundle(document: dict[str, Any], artifact: bytes) -> dict[str, Any]:
    return {"jobs": [{"results": document, "artifact_base64": base64.b64encode(artifact).decode()}]}


def test_imported_artifacts_must_be_calibrations_the_workers_can_read(api: TestClient,
                                                                      clean_engine: Engine) -> None:
    calibration = make_document(kind="calibration")  # 3 layers, 2 KV heads, head_dim 8, rank 4
    meta = json.dumps({"format": FORMAT}).encode()
    refused = [(make_artifact(mode="w:bz2"), "not a calibration blob"),  # would inflate in the worker
               (bytes(range(200)) * 3, "not a calibration blob"),
               (tar_of({META_NAME: meta, TENSORS_NAME: calibration_tensors(3, 2, 8, 4), "x": b""}),
                "unexpected tar member 'x'"),
               (tar_of({META_NAME: meta, TENSORS_NAME: calibration_tensors(3, 2, 8, 9)}), "does not fit"),
               (make_artifact(layers=4), "the artifact has layers 4"),
               (make_artifact(rank=2), "the artifact has rank 2")]
    for artifact, words in refused:
        _refused(api.post(f"{API}/results/import", json=_bundle(calibration, artifact)),
                 "jobs.0.artifact_base64", words)
    _refused(api.post(f"{API}/results/import", json=_bundle(make_document(), make_artifact())),
             "jobs.0.artifact_base64", "only a calibration has an artifact")
    assert _jobs(api) == 0
    response = api.post(f"{API}/results/import", json=_bundle(calibration, make_artifact()))
    assert response.status_code == 201, response.text
    with store.make_session_factory(clean_engine)() as session:
        assert store.load_calibration_artifact(session, response.json()["items"][0]["id"]) == make_artifact()


def test_a_large_import_leaves_the_server_answering(tmp_path: Path) -> None:
    documents = [make_document(layers=64, heads=64, kv_heads=8, seed=seed) for seed in range(5)]
    body = json.dumps({"jobs": [{"results": document} for document in documents]}).encode()
    assert len(body) > 15 * 2**20
    settings = make_settings(f"sqlite:///{tmp_path / 'headq.db'}")
    with TestClient(create_app(settings)) as api:
        answer: dict[str, Any] = {}

        def post() -> None:
            answer["status"] = api.post(f"{API}/results/import", content=body, headers=JSON).status_code

        thread = threading.Thread(target=post)
        thread.start()
        answered = 0
        while thread.is_alive():
            assert api.get(f"{API}/health").status_code == 200
            answered += 1
            time.sleep(0.02)
        thread.join()
    assert answer["status"] == 201 and answered >= 1
    # how long /health waits during an import is a benchmark's number, not a test's


@pytest.fixture
def strict_hosts(clean_engine: Engine, database_url: str) -> Iterator[TestClient]:
    """A tokenless app that knows no host names but its own (the test session allows ``testserver``)."""
    with TestClient(create_app(make_settings(database_url, allowed_hosts=[])),
                    base_url="http://127.0.0.1:8000") as client:
        yield client


def test_host_must_be_a_name_of_this_server(strict_hosts: TestClient) -> None:
    # as in the report: DNS rebinding, a page on attacker.example resolved to 127.0.0.1
    rebound = {"Host": "attacker.example", **JSON}
    for response in (strict_hosts.post(f"{API}/jobs", json=EVAL_SPEC, headers=rebound),
                     strict_hosts.get(f"{API}/jobs", headers=rebound),
                     strict_hosts.get(f"{API}/health", headers={"Host": "testserver"})):
        assert response.status_code == 400 and "is not a name of this server" in response.json()["detail"]
    for host in ("127.0.0.1:8000", "localhost", "LocalHost.:8000", "[::1]:8000", "127.3.4.5",
                 "[::ffff:127.0.0.1]:8000", "10.1.2.3:8000"):
        assert strict_hosts.get(f"{API}/health", headers={"Host": host}).status_code == 200, host
    assert _jobs(strict_hosts) == 0


@pytest.mark.parametrize(("host", "allowed", "answered"), [
    ("headq.example", ["headq.example"], True), ("other.example", ["headq.example"], False),
    ("lab.example", [], True), ("anything.example", ["*"], True)])
def test_configured_host_names_are_answered(tmp_path: Path, host: str, allowed: list[str],
                                            answered: bool) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'headq.db'}", host="lab.example", allowed_hosts=allowed)
    with TestClient(create_app(settings)) as api:
        status = api.get(f"{API}/health", headers={"Host": f"{host}:8000"}).status_code
    assert status == (200 if answered else 400)


def test_writes_to_a_tokenless_server_need_the_json_header(api: TestClient) -> None:
    spec = json.dumps(EVAL_SPEC).encode()
    job = api.post(f"{API}/jobs", json=EVAL_SPEC).json()
    for content_type in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                         "text/plain", None):  # what a cross-site form or no-cors fetch can send
        headers = {"Content-Type": content_type} if content_type else {}
        for path, body in (("/jobs", spec), ("/results/import", spec), (f"/jobs/{job['id']}/cancel", b"")):
            response = api.post(f"{API}{path}", content=body, headers=headers)
            assert response.status_code == 400, (path, content_type, response.text)
            assert "Content-Type: application/json" in response.json()["detail"]
    assert _jobs(api) == 1 and api.get(f"{API}/jobs/{job['id']}").json()["status"] == "queued"
    charset = {"Content-Type": "application/json; charset=utf-8"}
    assert api.post(f"{API}/jobs", content=spec, headers=charset).status_code == 201
    assert api.post(f"{API}/jobs/{job['id']}/cancel", headers=JSON).status_code == 202
    assert api.put(f"{API}/jobs", content=spec).status_code == 405  # an unserved method is still 405


def test_a_server_with_a_token_takes_writes_by_the_token(clean_engine: Engine, database_url: str) -> None:
    token = {"Authorization": "Bearer a-long-enough-token"}
    with TestClient(create_app(make_settings(database_url, api_token="a-long-enough-token"))) as api:
        job = api.post(f"{API}/jobs", json=EVAL_SPEC, headers=token).json()
        assert api.post(f"{API}/jobs/{job['id']}/cancel", headers=token).status_code == 202


def test_the_client_and_the_dashboard_pass_the_guards(tmp_path: Path) -> None:
    with start_api(tmp_path) as live:  # tokenless, dashboard mounted, uvicorn on a loopback port
        with HeadQClient(live.url) as client:
            job = client.submit(EVAL_SPEC)
            assert client.cancel(job.id).status == "cancelled"
            [imported] = client.import_results(make_document())
        assert httpx.get(f"{live.url}/dashboard/", timeout=30).status_code == 200
        # the Run page's layout: a Dash callback (a JSON POST) that reads the job over the REST API
        route = {"output": ".._pages_content.children..._pages_store.data..",
                 "outputs": [{"id": "_pages_content", "property": "children"},
                             {"id": "_pages_store", "property": "data"}],
                 "inputs": [{"id": "_pages_location", "property": "pathname", "value": "/dashboard/run"},
                            {"id": "_pages_location", "property": "search", "value": f"?job={imported.id}"}],
                 "changedPropIds": ["_pages_location.pathname"], "state": []}
        layout = httpx.post(f"{live.url}/dashboard/_dash-update-component", json=route, timeout=60)
        assert layout.status_code == 200 and imported.id in layout.text and "run-heat" in layout.text
        assert httpx.post(f"{live.url}{API}/jobs", content=json.dumps(EVAL_SPEC),
                          headers={"Content-Type": "text/plain"}).status_code == 400
        assert httpx.get(f"{live.url}{API}/jobs/{imported.id}",
                         headers={"Host": "attacker.example"}).status_code == 400
