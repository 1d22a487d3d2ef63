"""Fixtures: a migrated database per backend (SQLite file, PostgreSQL database made for the session),
a tiny Llama under an allowed model folder, job specs on it, settings with short timeouts, and
process bookkeeping so no worker outlives its test."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from headq_jobs.executors.settings import ExecutorSettings
from headq_jobs.settings import Settings
from headq_jobs.store import create_job, make_engine, make_session_factory, migrate, session_scope
from headq_jobs.store.models import Base, JobRow
from testkit.tinymodel import save_tiny_llama, write_corpus
from tests.pg import temporary_database

HEARTBEAT_TIMEOUT_S = 10.0  # the runner beats before it loads torch, so this can be short
LONG_JOB = {"max_tokens": 1536, "window": 64, "runs": 2}  # 24 windows x 2 runs: long enough to interrupt
# 1024 windows x 5 runs: for tests that interrupt a job and never let it finish, so that a fast
# machine cannot finish it between "it made progress" and the interruption
ENDLESS_JOB = {"max_tokens": 16384, "window": 16, "runs": 5}


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database of each backend for the session."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'headq.db'}"
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        yield url
        return
    with temporary_database("headq_workers") as url:
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        yield url

@pytest.fixture
def sessions(database_url: str) -> Iterator[Callable[[], Any]]:
    """``with sessions() as s:`` on an emptied database."""
    engine = make_engine(database_url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    factory = make_session_factory(engine)
    yield lambda: session_scope(factory)
    engine.dispose()


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The allowed model folder of the test server."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("text") / "corpus.txt")


@pytest.fixture(scope="session")
def tiny_model(models_root: Path, corpus: Path) -> Path:
    """A 2-layer random-weight Llama saved as safetensors under the allowed model folder."""
    return save_tiny_llama(models_root / "tiny-llama", corpus)


@pytest.fixture
def make_spec(tiny_model: Path, corpus: Path) -> Callable[..., dict[str, Any]]:
    """An evaluation (or calibration) spec on the tiny model and the test corpus."""
    def make(kind: str = "evaluation", *, max_tokens: int = 256, window: int = 32, runs: int = 1,
             model_id: str | None = None, calibration_job: str | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "kind": kind, "model": {"id": model_id or str(tiny_model), "device": "cpu"},
            "dataset": {"source": "files", "files": [str(corpus)], "window": window,
                        "max_tokens": max_tokens},
            "seed": 0}
        if kind == "calibration":
            spec["calibration"] = {"rank": 4}
        else:
            spec["runs"] = [{"name": f"k{bits}",
                             "key": {"bits": bits, "axis": "per_channel", "group_size": 8}}
                            for bits in (2, 4, 8, 3, 1)[:runs]]
            if calibration_job:
                spec["calibration_job"] = calibration_job
        return spec
    return make


def make_settings(database_url: str, models_root: Path, corpus: Path) -> Settings:
    """Server settings of the tests: the tiny model and corpus allowed, a short stale timeout."""
    return Settings(database_url=database_url, allowed_model_dirs=[models_root],
                    allowed_data_dirs=[corpus.parent],
                    heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S, dashboard=False, executor="local")


def make_options() -> ExecutorSettings:
    """Fast polling and heartbeats; a unique Celery queue so parallel sessions never share messages."""
    return ExecutorSettings(heartbeat_s=0.3, poll_s=0.2, cancel_grace_s=5.0, worker_concurrency=1,
                            queue=f"headq-test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def settings(database_url: str, models_root: Path, corpus: Path) -> Settings:
    return make_settings(database_url, models_root, corpus)


@pytest.fixture
def options() -> ExecutorSettings:
    return make_options()


def add_job(session: Session, spec: dict[str, Any], max_attempts: int = 3) -> JobRow:
    """Insert a queued job the way the API does."""
    job, _ = create_job(session, kind=spec["kind"], spec=spec, model_id=spec["model"]["id"],
                        max_attempts=max_attempts)
    return job


@pytest.fixture
def reap() -> Iterator[Callable[[int], None]]:
    """Register process ids (process-group leaders) to SIGKILL when the test ends."""
    pids: list[int] = []
    yield pids.append
    for pid in pids:
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)
