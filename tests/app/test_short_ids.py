"""Short job ids on SQLite and PostgreSQL: a unique prefix of at least 8 characters (what the
dashboard shows) reaches the job through get, cancel, results and exports; an ambiguous one is 409
naming every match; a shorter one, or one with LIKE wildcards, matches nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from .conftest import EVAL_SPEC
from .resultgen import make_document

API = "/api/v1"
JSON = {"Content-Type": "application/json"}
TWINS = ("0badcafe-0000-4000-8000-000000000001", "0badcafe-1111-4000-8000-000000000002")


@pytest.fixture
def twins(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """Two queued jobs whose ids share their first 8 (and more) characters."""
    ids = iter(uuid.UUID(twin) for twin in TWINS)
    monkeypatch.setattr(uuid, "uuid4", lambda: next(ids))
    made = tuple(api.post(f"{API}/jobs", json=EVAL_SPEC).json()["id"] for _ in TWINS)
    assert made == TWINS
    yield TWINS


def test_a_unique_prefix_reaches_the_job(api: TestClient) -> None:
    job_id = api.post(f"{API}/jobs", json=EVAL_SPEC).json()["id"]
    assert api.get(f"{API}/jobs/{job_id[:8]}").json()["id"] == job_id
    cancelled = api.post(f"{API}/jobs/{job_id[:8]}/cancel", headers=JSON)
    assert cancelled.status_code == 202 and cancelled.json()["id"] == job_id
    assert cancelled.json()["status"] == "cancelled"
    short = api.get(f"{API}/jobs/{job_id[:7]}")
    assert short.status_code == 404 and job_id[:7] in short.json()["detail"]


def test_results_and_exports_by_short_id(api: TestClient) -> None:
    [job] = api.post(f"{API}/results/import", json=make_document(seed=3)).json()["items"]
    prefix = job["id"][:8]
    assert api.get(f"{API}/jobs/{prefix}/results").json()["runs"]
    for fmt in ("csv", "parquet"):
        export = api.get(f"{API}/jobs/{prefix}/results", params={"format": fmt})
        assert export.status_code == 200
        assert f'filename="{job["id"]}.{fmt}"' in export.headers["content-disposition"]


def test_an_ambiguous_prefix_is_409_naming_the_matches(api: TestClient, twins: tuple[str, str]) -> None:
    for method, path in (("get", ""), ("post", "/cancel"), ("get", "/results")):
        response = getattr(api, method)(f"{API}/jobs/0badcafe{path}", headers=JSON)
        assert response.status_code == 409, response.text
        assert all(twin in response.json()["detail"] for twin in twins)
    assert api.get(f"{API}/jobs/0badcafe-1").json()["id"] == twins[1]  # longer: unique again
    assert api.get(f"{API}/jobs/{twins[0]}").json()["id"] == twins[0]


def test_wildcards_are_text_not_patterns(api: TestClient, twins: tuple[str, str]) -> None:
    for pattern in ("0badcaf_", "0badca%25"):
        response = api.get(f"{API}/jobs/{pattern}")
        assert response.status_code == 404, response.text
