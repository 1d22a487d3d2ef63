"""API latency under concurrent clients: p50 / p99 of mixed reads and writes, and of ``/health``, at
50 / 100 / 200 clients, on SQLite and PostgreSQL.

A real server (``headq serve --executor none``: uvicorn and the real ``create_app``, no dashboard)
runs in its own process on a fresh database. The load comes from this process (one asyncio loop,
HTTP/1.1 keep-alive connections written by hand to keep the generator's CPU small): each of
``clients`` connections sends ``--rounds`` requests back to back, alternately ``POST /jobs`` (each
with its own Idempotency-Key) and ``GET /jobs?limit=20``, while a prober in its own process sends
``GET /health`` every 50 ms. Afterwards the jobs in the database are compared with the 201 answers
(every committed job acknowledged). Load generator and server share the machine's cores.

    .venv/bin/python benchmarks/bench_api_concurrency.py --clients 50 100 200 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testkit.postgres import PG_URL, temporary_database  # noqa: E402

API = "/api/v1"
SPEC = {"kind": "evaluation", "model": {"id": "org/model"},
        "runs": [{"name": "k2", "key": {"bits": 2, "axis": "per_channel", "group_size": 32}}]}
HEALTH_EVERY_S = 0.05


@contextlib.contextmanager
def fresh_database(backend: str, tmp: Path) -> Iterator[str]:
    """The URL of an empty database (a PostgreSQL one is created here and dropped afterwards)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp / f'bench-{uuid.uuid4().hex[:8]}.db'}"
        return
    with temporary_database("headq_bench") as url:
        yield url


@contextlib.contextmanager
def server(database_url: str, log: Path) -> Iterator[str]:
    """``headq serve`` on a free loopback port; its base URL once ``/health`` answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HEADQ_DATABASE_URL": database_url, "HEADQ_DASHBOARD": "false"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "headq_cli.main", "serve", "--port", str(port),
                                 "--executor", "none", "--log-level", "warning"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not answers(f"{url}{API}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # requests still stuck inside a hung server
            proc.kill()
            proc.wait()


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def probe_health(url: str, ready: Any, stop: Any, results: Any) -> None:
    """``GET /health`` every 50 ms until ``stop`` is set (``ready`` once connected); puts the
    latencies (s) on ``results``."""
    latencies: list[float] = []
    with httpx.Client(timeout=120) as client:
        client.get(f"{url}{API}/health").raise_for_status()
        ready.set()
        while not stop.is_set():
            start = time.perf_counter()
            client.get(f"{url}{API}/health").raise_for_status()
            latencies.append(time.perf_counter() - start)
            stop.wait(HEALTH_EVERY_S)
    results.put(latencies)


def phase(url: str, clients: int, rounds: int, timeout: float) -> dict[str, Any]:
    """One load phase with the /health prober running beside it in its own process."""
    context = multiprocessing.get_context("spawn")
    ready, stop, results = context.Event(), context.Event(), context.Queue()
    prober = context.Process(target=probe_health, args=(url, ready, stop, results))
    prober.start()
    if not ready.wait(60):
        raise RuntimeError("the /health prober did not start")
    try:
        row = asyncio.run(load(url, clients, rounds, timeout))
    finally:
        stop.set()
    health = results.get(timeout=180)
    prober.join()
    return {**row, "health_probes": len(health), "health_p50_ms": ms(statistics.median(health)),
            "health_p99_ms": ms(p99(health)), "health_max_ms": ms(max(health))}


class Connection:
    """One keep-alive HTTP/1.1 connection, spoken by hand: httpx's own bookkeeping would cost the
    load generator more CPU than the server spends on a request, on the same two cores."""

    def __init__(self, url: str) -> None:
        self.host, _, port = url.removeprefix("http://").partition(":")
        self.port = int(port)
        self.stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, target: str, body: bytes = b"", key: str = "") -> tuple[int, bytes]:
        """``(status, body)`` of one request (the API answers with a Content-Length)."""
        if self.stream is None:
            self.stream = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.stream
        head = f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        if key:
            head += f"Idempotency-Key: {key}\r\n"
        writer.write(f"{head}\r\n".encode() + body)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            length = int(value) if name.strip().lower() == b"content-length" else length
        return status, await reader.readexactly(length)

    def close(self) -> None:
        if self.stream is not None:
            self.stream[1].close()
            self.stream = None


async def load(url: str, clients: int, rounds: int, timeout: float) -> dict[str, Any]:
    """``clients`` concurrent connections of ``rounds`` requests each."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    acknowledged: list[str] = []
    body = json.dumps(SPEC).encode()

    async def one_client(i: int) -> None:
        connection = Connection(url)
        for k in range(rounds):
            write = (i + k) % 2 == 1
            start = time.perf_counter()
            try:
                ask = (connection.request("POST", f"{API}/jobs", body, uuid.uuid4().hex) if write
                       else connection.request("GET", f"{API}/jobs?limit=20"))
                status, answer = await asyncio.wait_for(ask, timeout)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                statuses[type(exc).__name__] += 1
                connection.close()
                continue
            latencies.append(time.perf_counter() - start)
            statuses[str(status)] += 1
            if status == 201:
                acknowledged.append(json.loads(answer)["id"])
        connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(one_client(i) for i in range(clients)))
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": clients * rounds, "wall_s": round(wall, 2),
            "requests_per_s": round(clients * rounds / wall, 1), "statuses": dict(sorted(statuses.items())),
            "p50_ms": ms(statistics.median(latencies)), "p99_ms": ms(p99(latencies)),
            "max_ms": ms(max(latencies)), "acknowledged": acknowledged}


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 1)


def committed_jobs(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return set(conn.scalars(text("SELECT id FROM jobs")))
    finally:
        engine.dispose()


def cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())


def git(*argv: str) -> str:
    return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def provenance() -> dict[str, Any]:
    """Command, date, machine, commit and library versions of this run."""
    engine = create_engine(PG_URL)
    with engine.connect() as conn:
        postgres = conn.scalar(text("SHOW server_version"))
    engine.dispose()
    import sqlite3

    return {"command": shlex.join(["benchmarks/bench_api_concurrency.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "device": f"{cpu_model()}, {os.cpu_count()} cores", "commit": git("rev-parse", "HEAD"),
            "uncommitted_changes": bool(git("status", "--porcelain")),
            "versions": {"python": platform.python_version(), "postgresql": postgres,
                         "sqlite": sqlite3.sqlite_version,
                         **{name: version(name) for name in ("fastapi", "starlette", "uvicorn", "anyio",
                                                              "sqlalchemy", "psycopg", "httpx")}},
            "load_average_1m": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--rounds", type=int, default=5, help="requests per client")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, s")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "api_concurrency.json")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    jobs: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for backend in args.backends:
            with fresh_database(backend, tmp) as url, server(url, tmp / "serve.log") as base:
                acknowledged: set[str] = set()
                for clients in args.clients:
                    row = phase(base, clients, args.rounds, args.timeout)
                    acknowledged |= set(row.pop("acknowledged"))
                    rows.append({"backend": backend, **row})
                committed = committed_jobs(url)
            jobs[backend] = {"committed": len(committed), "acknowledged": len(acknowledged),
                             "committed_not_acknowledged": len(committed - acknowledged)}
    print(f"{'backend':<11}{'clients':>8}{'requests':>9}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'health p99 ms':>15}  statuses")
    for r in rows:
        print(f"{r['backend']:<11}{r['clients']:>8}{r['requests']:>9}{r['requests_per_s']:>8}{r['p50_ms']:>9}"
              f"{r['p99_ms']:>9}{r['health_p99_ms']:>15}  {r['statuses']}")
    print(f"jobs: {jobs}")
    out = {"benchmark": "bench_api_concurrency", **provenance(), "rounds": args.rounds, "rows": rows,
           "jobs": jobs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
