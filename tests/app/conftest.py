"""Fixtures: one database per test session on SQLite and on PostgreSQL (a uniquely named database,
dropped at the end), emptied before each test; an API client on the real ``create_app``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.main import create_app
from headq_jobs.settings import Settings
from headq_jobs.store import make_engine, make_session_factory, migrate
from headq_jobs.store.models import Base
from tests.pg import temporary_database


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, empty database URL of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'headq.db'}"
        return
    with temporary_database("headq_test") as url:
        yield url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    """The migrated engine of the session's database."""
    eng = make_engine(database_url)
    migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def clean_engine(engine: Engine) -> Engine:
    """The engine with every table emptied."""
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    return engine


@pytest.fixture
def session(clean_engine: Engine) -> Iterator[Session]:
    """A session on an empty database."""
    factory = make_session_factory(clean_engine)
    with factory() as s:
        yield s


def make_settings(database_url: str, **overrides: object) -> Settings:
    """Settings for a test app: no executor (jobs stay queued), no dashboard, unless overridden."""
    values: dict[str, object] = {"database_url": database_url, "executor": "none", "dashboard": False}
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def api(clean_engine: Engine, database_url: str) -> Iterator[TestClient]:
    """A test client of the real app on an empty database (no token, no executor)."""
    with TestClient(create_app(make_settings(database_url))) as client:
        yield client


EVAL_SPEC = {"kind": "evaluation", "model": {"id": "org/model"},
             "runs": [{"name": "k2", "key": {"bits": 2, "axis": "per_channel", "group_size": 32}}]}


@pytest.fixture(scope="session")
def shared_api(engine: Engine, database_url: str) -> Iterator[TestClient]:
    """One app per database for tests that only send requests which must not change anything
    (cheaper than an app per test); such tests compare the job count before and after."""
    with TestClient(create_app(make_settings(database_url))) as client:
        yield client
