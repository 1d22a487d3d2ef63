"""The API with C2's real executors: with the Celery broker unreachable (a closed local port),
submission answers 503, the job stays queued with the reason noted, and ``/ready`` says why; with
the real RabbitMQ on localhost the API is ready and submission is 201."""

from __future__ import annotations

import socket
import uuid

import pytest
from fastapi.testclient import TestClient
from kombu import Connection
from sqlalchemy import Engine

from app.main import create_app
from headq_jobs.executors import ExecutorSettings, build_executor

from .conftest import EVAL_SPEC, make_settings

API = "/api/v1"
RABBIT = "amqp://guest:guest@127.0.0.1:5672//"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _broker_up() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", 5672)) == 0


def test_broker_down_gives_503_and_keeps_the_job(clean_engine: Engine, database_url: str) -> None:
    settings = make_settings(database_url, executor="celery",
                             broker_url=f"amqp://guest:guest@127.0.0.1:{_closed_port()}//")
    executor = build_executor(settings, ExecutorSettings(poll_s=60, queue=f"test-{uuid.uuid4().hex}"))
    with TestClient(create_app(settings, executor=executor)) as api:
        response = api.post(f"{API}/jobs", json=EVAL_SPEC, headers={"Idempotency-Key": "k"})
        assert response.status_code == 503 and "broker" in response.json()["detail"]
        [job] = api.get(f"{API}/jobs").json()["items"]
        assert job["status"] == "queued" and "broker" in job["error"]
        retry = api.post(f"{API}/jobs", json=EVAL_SPEC, headers={"Idempotency-Key": "k"})
        assert retry.status_code == 201 and retry.json()["id"] == job["id"]
        ready = api.get(f"{API}/ready")
        assert ready.status_code == 503 and ready.json()["detail"].startswith("executor:")


@pytest.mark.skipif(not _broker_up(), reason="RabbitMQ is not running on 127.0.0.1:5672")
def test_broker_up_is_ready_and_submits(clean_engine: Engine, database_url: str) -> None:
    settings = make_settings(database_url, executor="celery", broker_url=RABBIT)
    queue = f"test-{uuid.uuid4().hex}"
    executor = build_executor(settings, ExecutorSettings(poll_s=60, queue=queue))
    try:
        with TestClient(create_app(settings, executor=executor)) as api:
            assert api.get(f"{API}/ready").json() == {"status": "ok", "detail": None}
            response = api.post(f"{API}/jobs", json=EVAL_SPEC)
            assert response.status_code == 201 and response.json()["error"] is None
    finally:  # the message sent to the test's own queue is not for any worker
        with Connection(RABBIT) as connection:
            connection.default_channel.queue_delete(queue)
