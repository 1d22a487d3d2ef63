"""Security and robustness of the API: bearer token on writes, body size limit (413), CORS closed by
default, the serve-address guard (loopback in all its spellings, no weak token beyond it), settings
from the environment, and no 5xx on malformed bodies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.main import create_app
from headq_jobs.settings import Settings, check_serve_address, get_settings

from .conftest import EVAL_SPEC, make_settings
from .resultgen import make_document

API = "/api/v1"


@pytest.fixture
def locked(clean_engine: Engine, database_url: str) -> Iterator[TestClient]:
    """An app that requires the token ``s3cret`` on writes."""
    with TestClient(create_app(make_settings(database_url, api_token="s3cret"))) as client:
        yield client


def test_writes_need_the_bearer_token(locked: TestClient) -> None:
    writes = [("post", f"{API}/jobs", EVAL_SPEC), ("post", f"{API}/results/import", make_document()),
              ("post", f"{API}/jobs/any/cancel", None)]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        for method, path, body in writes:
            response = getattr(locked, method)(path, json=body, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
            assert "bearer token" in response.json()["detail"]
            assert response.headers["WWW-Authenticate"] == "Bearer"
    good = {"Authorization": "Bearer s3cret"}
    job = locked.post(f"{API}/jobs", json=EVAL_SPEC, headers=good)
    assert job.status_code == 201
    assert locked.get(f"{API}/jobs").json()["total"] == 1  # reads stay open
    assert locked.get(f"{API}/jobs/{job.json()['id']}").status_code == 200
    assert locked.post(f"{API}/jobs/{job.json()['id']}/cancel", headers=good).status_code == 202


def test_oversized_bodies_are_413(clean_engine: Engine, database_url: str) -> None:
    with TestClient(create_app(make_settings(database_url, max_request_bytes=4096))) as api:
        big = {**EVAL_SPEC, "label": "x" * 5000}
        response = api.post(f"{API}/jobs", json=big)
        assert response.status_code == 413 and "max_request_bytes" in response.json()["detail"]

        def chunks() -> Iterator[bytes]:  # streamed without Content-Length
            yield b'{"kind": "evaluation", "label": "'
            yield b"y" * 5000
            yield b'"}'

        streamed = api.post(f"{API}/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        assert api.post(f"{API}/jobs", json=EVAL_SPEC).status_code == 201
        assert api.get(f"{API}/jobs").json()["total"] == 1


def test_cors_closed_by_default_open_when_configured(clean_engine: Engine, database_url: str) -> None:
    preflight = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(make_settings(database_url))) as api:
        response = api.get(f"{API}/health", headers={"Origin": "https://example.org"})
        assert "access-control-allow-origin" not in response.headers
        assert "access-control-allow-origin" not in api.options(f"{API}/jobs", headers=preflight).headers
    settings = make_settings(database_url, cors_origins=["https://example.org"])
    with TestClient(create_app(settings)) as api:
        response = api.options(f"{API}/jobs", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://example.org"
        other = api.get(f"{API}/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


STRONG = "sixteen-chars-ok"


@pytest.mark.parametrize(("host", "token", "allow", "refused"), [
    ("127.0.0.1", None, False, None), ("localhost", None, False, None), ("::1", None, False, None),
    ("127.1.2.3", None, False, None), ("::ffff:127.0.0.1", None, False, None),
    ("[::ffff:127.0.0.1]", None, False, None), ("127.0.0.1", "t", False, None),
    ("0.0.0.0", None, False, "host"), ("192.168.1.5", None, False, "host"), ("0.0.0.0", STRONG, False, None),
    ("0.0.0.0", None, True, None), ("example.org", None, False, "host"),
    ("::ffff:10.0.0.1", None, False, "host"),
    ("0.0.0.0", "t", False, "api_token"), ("0.0.0.0", STRONG[:15], False, "api_token"),
    ("0.0.0.0", "short", True, "api_token")])
def test_serve_address_guard(host: str, token: str | None, allow: bool, refused: str | None) -> None:
    settings = Settings(host=host, api_token=token, allow_remote_without_token=allow)
    if refused:
        with pytest.raises(ValueError, match=f"^{refused}: .*(HEADQ_API_TOKEN|16 random characters)"):
            check_serve_address(settings)
    else:
        check_serve_address(settings)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HEADQ_API_TOKEN", "tok")
    monkeypatch.setenv("HEADQ_PORT", "9001")
    monkeypatch.setenv("HEADQ_ALLOWED_MODEL_DIRS", f'["{tmp_path}"]')
    monkeypatch.setenv("HEADQ_TRUST_REMOTE_CODE", "false")
    settings = Settings()
    assert (settings.token, settings.port, settings.allowed_model_dirs) == ("tok", 9001, [tmp_path])
    assert settings.database_url == "sqlite:///./.headq/headq.db" and not settings.cors_origins
    assert settings.api_base_url == "http://127.0.0.1:9001/api/v1"
    assert Settings(host="::1", port=80).api_base_url == "http://[::1]:80/api/v1"
    assert Settings(host="0.0.0.0", port=8000).api_base_url == "http://127.0.0.1:8000/api/v1"
    monkeypatch.setenv("HEADQ_PORT", "0")
    with pytest.raises(ValueError, match="port"):
        Settings()
    get_settings.cache_clear()
    monkeypatch.setenv("HEADQ_PORT", "9002")
    assert get_settings() is get_settings() and get_settings().port == 9002
    get_settings.cache_clear()


MALFORMED = [b"", b"{", b"null", b"[]", b'"text"', b"123", b'{"kind": 5}', b"\xff\xfe",
             b"[" * 5000 + b"]" * 5000,
             b'{"kind": "evaluation", "model": {"id": "a/b"}, "runs": [{"name": "a", "key": {"bits": 1e4}}]}',
             b'{"kind": "evaluation", "model": {"id": "a/b"}, "seed": 99999999999999999999999999}',
             b'{"kind": "evaluation", "model": {"id": "a/b\\u0000"}, "runs": [{"name": "a"}]}',
             b'{"kind": "evaluation", "model": {"id": "a/b"}, "runs": "k2"}']


@pytest.mark.parametrize("body", MALFORMED, ids=range(len(MALFORMED)))
@pytest.mark.parametrize("path", ["/jobs", "/results/import"])
def test_malformed_bodies_are_4xx(shared_api: TestClient, body: bytes, path: str) -> None:
    before = shared_api.get(f"{API}/jobs").json()["total"]
    for content_type in ("application/json", "text/plain"):
        response = shared_api.post(f"{API}{path}", content=body, headers={"Content-Type": content_type})
        assert 400 <= response.status_code < 500, (body[:80], response.status_code, response.text[:300])
        assert isinstance(response.json()["detail"], str)
    assert shared_api.get(f"{API}/jobs").json()["total"] == before


def test_invalid_json_names_the_body(api: TestClient) -> None:
    response = api.post(f"{API}/jobs", content=b'{"kind": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error == {"field": "body", "message": "invalid JSON (Expecting value) at character 9"}


def test_text_and_numbers_postgresql_cannot_store_are_refused(api: TestClient) -> None:
    doc = make_document()
    cases = [("/jobs", {**EVAL_SPEC, "label": "a\x00b"}, "label"),
             ("/jobs", {**EVAL_SPEC, "runs": [{"name": "r" * 201, "key": {"bits": 2}}]}, "runs.0.name"),
             ("/results/import", {**doc, "dataset": {"name": "x\x00"}}, "dataset.name"),
             ("/results/import", {**doc, "heads": [{**doc["heads"][0], "layer": 2**40}]}, "heads.0.layer")]
    for path, body, field in cases:
        response = api.post(f"{API}{path}", json=body)
        assert response.status_code == 422, (field, response.text)
        assert response.json()["errors"][0]["field"] == field
    assert api.get(f"{API}/jobs/a%00b").status_code == 404
    assert api.get(f"{API}/jobs", params={"model": "a\x00"}).json() == {"items": [], "total": 0}
    assert api.get(f"{API}/jobs").json()["total"] == 0
