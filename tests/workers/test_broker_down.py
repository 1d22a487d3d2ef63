"""A broker that is down: submission answers 503 with a message, the job row stays queued with the
note, and a reconciler on a reachable broker sends it later, so nothing is lost. Real RabbitMQ and
Redis on localhost; "down" is a closed port."""

from __future__ import annotations

import socket
import time

import pytest
from celery import Celery
from fastapi.testclient import TestClient

from app.main import create_app
from headq_jobs.executors import CeleryExecutor, ExecutorUnavailable
from headq_jobs.executors.celery_config import TASK_NAME, celery_config
from headq_jobs.store import get_job
from tests.workers.conftest import add_job

pytestmark = [pytest.mark.services, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]
BROKERS = {"rabbitmq": "amqp://guest:guest@127.0.0.1:{port}//", "redis": "redis://127.0.0.1:{port}/0"}
LIVE_PORTS = {"rabbitmq": 5672, "redis": 6379}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require(broker: str) -> None:
    try:
        socket.create_connection(("127.0.0.1", LIVE_PORTS[broker]), timeout=2).close()
    except OSError:
        pytest.skip(f"{broker} is not running on localhost")


def drain(broker_url: str, queue: str, timeout: float = 10.0) -> list[tuple[str, list[str]]]:
    """Take every message off ``queue``: ``(task name, args)`` of each."""
    app = Celery("drain")
    app.conf.update(celery_config(broker_url, queue=queue))
    found: list[tuple[str, list[str]]] = []
    deadline = time.monotonic() + timeout
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(app.amqp.queues[queue])  # declared as the executor declares it
        while time.monotonic() < deadline:
            try:
                message = simple.get(timeout=0.5)
            except simple.Empty:
                if found:
                    break
                continue
            args = message.payload[0] if isinstance(message.payload, list | tuple) else message.payload
            found.append((message.headers["task"], list(args)))
            message.ack()
        simple.close()
    return found


@pytest.mark.parametrize("broker", sorted(BROKERS))
def test_submit_with_broker_down_keeps_the_job_and_a_reconciler_sends_it(
        broker, settings, options, sessions, make_spec) -> None:
    require(broker)
    down = settings.model_copy(update={"executor": "celery",
                                       "broker_url": BROKERS[broker].format(port=closed_port())})
    with sessions() as s:
        job = add_job(s, make_spec())
    executor = CeleryExecutor(down, options)
    with pytest.raises(ExecutorUnavailable, match="broker unavailable") as raised:
        executor.submit(job.id)
    assert "guest:guest" not in str(raised.value)
    ok, reason = executor.ready()
    assert not ok and "unreachable" in reason
    with sessions() as s:
        row = get_job(s, job.id)
        assert row.status == "queued" and "broker unavailable" in (row.error or "")

    up = settings.model_copy(update={"executor": "celery",
                                     "broker_url": BROKERS[broker].format(port=LIVE_PORTS[broker])})
    live = CeleryExecutor(up, options)
    assert live.ready()[0]
    live.tick()  # the reconciler round a running server does every poll_s
    assert drain(up.broker_url, options.queue) == [(TASK_NAME, [job.id])]
    live.tick()  # already sent for this attempt: not sent again
    assert drain(up.broker_url, options.queue, timeout=1.5) == []


def test_api_answers_503_and_the_job_is_still_queued(settings, options, sessions, monkeypatch,
                                                     make_spec) -> None:
    monkeypatch.setenv("HEADQ_QUEUE", options.queue)
    monkeypatch.setenv("HEADQ_HEARTBEAT_S", str(options.heartbeat_s))
    down = settings.model_copy(update={"executor": "celery",
                                       "broker_url": BROKERS["rabbitmq"].format(port=closed_port())})
    with TestClient(create_app(down)) as client:
        response = client.post("/api/v1/jobs", json=make_spec())
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert "broker unavailable" in detail
        (job,) = client.get("/api/v1/jobs").json()["items"]
        assert job["status"] == "queued" and job["id"] in detail and "broker unavailable" in job["error"]
        ready = client.get("/api/v1/ready")
        assert ready.status_code == 503 and "broker" in ready.json()["detail"]
