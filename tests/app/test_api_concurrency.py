"""The API under many concurrent requests, on a real server (uvicorn, the real ``create_app``) and
real databases: 200 mixed reads and writes are all answered without a 5xx and every committed job
reaches its client; ``/health`` answers while every request thread waits on the database; beyond
``max_open_requests`` the API answers 503 with ``Retry-After`` instead of queueing, and recovers.
Speed (p50 / p99) is measured by benchmarks/bench_api_concurrency.py, not asserted here."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Connection, Engine, text

from app.main import create_app
from headq_jobs import store
from headq_jobs.store import make_session_factory
from testkit.live_server import LiveServer, free_port
from tests.workers.waiting import wait_for

from .conftest import EVAL_SPEC, make_settings

API = "/api/v1"
HANG_GUARD_S = 120  # a request unanswered this long failed (the old server hung for minutes)


def serve(database_url: str, **overrides: object) -> LiveServer:
    """A real server on a free port (no executor, no dashboard)."""
    port = free_port()
    return LiveServer(create_app(make_settings(database_url, port=port, **overrides)), port)


def job_ids(engine: Engine) -> set[str]:
    with make_session_factory(engine)() as session:
        items, _ = store.list_jobs(session, limit=10_000)
    return {job.id for job in items}


async def mixed_load(url: str, clients: int) -> list[httpx.Response]:
    """``clients`` requests at once: half submit a job (each with its own idempotency key), half
    list jobs."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=HANG_GUARD_S, limits=limits) as client:
        def one(i: int):
            if i % 2:
                key = {"Idempotency-Key": uuid.uuid4().hex}
                return client.post(f"{API}/jobs", json=EVAL_SPEC, headers=key)
            return client.get(f"{API}/jobs", params={"limit": 1})
        return await asyncio.gather(*(one(i) for i in range(clients)))


def test_200_concurrent_reads_and_writes_are_all_answered_and_acknowledged(clean_engine: Engine,
                                                                          database_url: str) -> None:
    with serve(database_url) as server:
        responses = asyncio.run(mixed_load(server.url, 200))
    statuses = [r.status_code for r in responses]
    assert sorted(set(statuses)) == [200, 201], [r.text for r in responses if r.status_code >= 300][:3]
    acknowledged = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(acknowledged) == 100
    assert job_ids(clean_engine) == acknowledged  # no job committed behind a client's error


@pytest.fixture
def jobs_locker(clean_engine: Engine, database_url: str) -> Iterator[Connection]:
    """PostgreSQL: a connection whose transaction holds ``LOCK TABLE jobs IN EXCLUSIVE MODE`` (reads
    pass, every insert waits) until the test rolls it back."""
    if not database_url.startswith("postgresql"):
        pytest.skip("sessions waiting for a lock are observable on PostgreSQL (pg_stat_activity)")
    with clean_engine.connect() as locker:
        locker.execute(text("LOCK TABLE jobs IN EXCLUSIVE MODE"))
        yield locker


def lock_waiters(engine: Engine) -> int:
    """Sessions of this database waiting for a lock."""
    with engine.connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                "AND wait_event_type = 'Lock'")) or 0


def test_health_answers_while_every_request_thread_waits_on_the_database(
        jobs_locker: Connection, clean_engine: Engine, database_url: str) -> None:
    threads = 8

    async def scenario(url: str) -> tuple[int, list[int]]:
        async with httpx.AsyncClient(base_url=url, timeout=HANG_GUARD_S,
                                     limits=httpx.Limits(max_connections=100)) as client:
            posts = [asyncio.create_task(client.post(f"{API}/jobs", json=EVAL_SPEC)) for _ in range(60)]
            while lock_waiters(clean_engine) < threads:  # every request thread waits for the lock
                await asyncio.sleep(0.05)
            health = await client.get(f"{API}/health")
            assert not any(post.done() for post in posts)  # answered while the threads were still stuck
            assert lock_waiters(clean_engine) == threads  # request_threads bounds the work in the database
            jobs_locker.rollback()
            return health.status_code, [post.status_code for post in await asyncio.gather(*posts)]

    with serve(database_url, request_threads=threads) as server:
        health, posts = asyncio.run(scenario(server.url))
    assert health == 200 and posts == [201] * 60


def raw_request_head(port: int, path: str, body: bytes) -> socket.socket:
    """A socket that sent a POST's headers but not its body: the request is open in the server."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
    return sock


def finish_raw_request(sock: socket.socket, body: bytes) -> int:
    """Send the body, read the answer to the end; its status code."""
    with sock:
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_beyond_max_open_requests_the_api_answers_503_with_retry_after(clean_engine: Engine,
                                                                      database_url: str) -> None:
    body = json.dumps(EVAL_SPEC).encode()
    with serve(database_url, max_open_requests=4) as server, httpx.Client(base_url=server.url) as client:
        held = [raw_request_head(server.port, f"{API}/jobs", body) for _ in range(4)]
        busy = wait_for(lambda: (r := client.get(f"{API}/jobs")).status_code == 503 and r, 30,
                        "the four held requests to fill the API")
        assert busy.headers["Retry-After"] == "1" and "max_open_requests" in busy.json()["detail"]
        assert client.get(f"{API}/health").json() == {"status": "ok", "detail": None}
        assert [finish_raw_request(sock, body) for sock in held] == [201] * 4
        page = client.get(f"{API}/jobs")
        assert page.status_code == 200 and page.json()["total"] == 4
