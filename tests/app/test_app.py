"""``create_app`` itself: settings from the environment when none are given, the database migrated
at startup (a fresh file gets every table), OpenAPI at /docs, the dashboard mounted, and /ready
answering 503 when the database goes away."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from app.main import create_app
from headq_jobs.settings import get_settings

from .conftest import make_settings


def test_create_app_from_environment_migrates_a_fresh_database(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    db = tmp_path / "nested" / "headq.db"
    monkeypatch.setenv("HEADQ_DATABASE_URL", f"sqlite:///{db}")
    monkeypatch.setenv("HEADQ_EXECUTOR", "none")
    monkeypatch.setenv("HEADQ_DASHBOARD", "false")
    get_settings.cache_clear()
    try:
        with TestClient(create_app()) as api:
            assert api.get("/api/v1/health").json() == {"status": "ok", "detail": None}
            assert api.get("/api/v1/ready").status_code == 200
            assert api.get("/docs").status_code == 200
            paths = api.get("/openapi.json").json()["paths"]
            assert {"/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/cancel",
                    "/api/v1/jobs/{job_id}/results", "/api/v1/calibrations", "/api/v1/results/import",
                    "/api/v1/health", "/api/v1/ready"} <= set(paths)
    finally:
        get_settings.cache_clear()
    tables = set(inspect(create_engine(f"sqlite:///{db}")).get_table_names())
    assert {"jobs", "results", "head_rows", "calibration_artifacts", "alembic_version"} <= tables


def test_dashboard_is_mounted(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'headq.db'}", dashboard=True)
    with TestClient(create_app(settings)) as api:
        page = api.get("/dashboard/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_ready_is_503_when_the_database_is_gone(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("dropping a live database is a PostgreSQL scenario")
    name = f"headq_gone_{uuid.uuid4().hex[:8]}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        with TestClient(create_app(make_settings(url))) as api:
            assert api.get("/api/v1/ready").status_code == 200
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            response = api.get("/api/v1/ready")
            assert response.status_code == 503 and response.json()["detail"].startswith("database:")
            assert api.get("/api/v1/health").status_code == 200
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
