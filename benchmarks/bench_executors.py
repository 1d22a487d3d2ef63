"""Job overhead of the two executors on a tiny model: how long a queued job waits to be claimed,
how long its worker needs before the first progress report (process start, imports, model load),
and the whole job, for ``--jobs`` jobs in a row. ``local`` spawns a process per job; ``celery``
(RabbitMQ on localhost, one pool process recycled per task) forks from a parent that has torch
loaded already. SQLite database; the tiny Llama of tests/workers. Wall and load average are both
reported (on a shared machine the wall time mostly measures waiting).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_executors.py --jobs 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from headq_jobs.executors import CeleryExecutor, LocalExecutor
from headq_jobs.executors.settings import ExecutorSettings
from headq_jobs.executors.spawn import settings_env
from headq_jobs.settings import Settings
from headq_jobs.store import create_job, get_job, make_engine, make_session_factory, migrate, session_scope
from testkit.tinymodel import save_tiny_llama, write_corpus

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def spec(model: Path, corpus: Path, max_tokens: int) -> dict[str, Any]:
    return {"kind": "evaluation", "model": {"id": str(model), "device": "cpu"},
            "dataset": {"source": "files", "files": [str(corpus)], "window": 64, "max_tokens": max_tokens},
            "runs": [{"name": "k2", "key": {"bits": 2, "axis": "per_channel", "group_size": 32}}]}


def time_job(factory: Any, executor: Any, job_spec: dict[str, Any]) -> dict[str, float]:
    """Queue one job, hand it to the executor and poll until it ends: the phases in seconds."""
    with session_scope(factory) as session:
        job, _ = create_job(session, kind="evaluation", spec=job_spec, model_id=job_spec["model"]["id"])
    t0 = time.monotonic()
    executor.submit(job.id)
    marks: dict[str, float] = {}
    while True:
        with session_scope(factory) as session:
            row = get_job(session, job.id)
        now = time.monotonic() - t0
        if row.status != "queued":
            marks.setdefault("claimed", now)
        if row.progress > 0:
            marks.setdefault("first_progress", now)
        if row.status in ("succeeded", "failed", "cancelled"):
            if row.status != "succeeded":
                raise RuntimeError(f"job {job.id} {row.status}: {row.error}")
            marks["done"] = now
            return marks
        time.sleep(0.05)


def start_worker(settings: Settings, options: ExecutorSettings, logs: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env(settings, options)}
    with open(logs / "worker.log", "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "headq_cli.main", "worker", "--concurrency", "1",
                                 "--hostname", f"{options.queue}@%h"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "executors.json")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        corpus = write_corpus(tmp / "corpus.txt")
        model = save_tiny_llama(tmp / "models" / "tiny", corpus)
        settings = Settings(database_url=f"sqlite:///{tmp}/bench.db", allowed_model_dirs=[tmp / "models"],
                            heartbeat_timeout_s=30, dashboard=False)
        engine = make_engine(settings.database_url)
        migrate(engine)
        factory = make_session_factory(engine)
        options = ExecutorSettings(heartbeat_s=1, poll_s=0.2, queue=f"headq-bench-{os.getpid()}")
        job_spec = spec(model, corpus, args.max_tokens)

        local = LocalExecutor(settings, options)
        local.start()
        results["local"] = [time_job(factory, local, job_spec) for _ in range(args.jobs)]
        local.stop()

        try:
            socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
        except OSError:
            print("RabbitMQ not reachable on localhost: celery skipped")
        else:
            celery_settings = settings.model_copy(update={"executor": "celery", "broker_url": RABBITMQ})
            worker = start_worker(celery_settings, options, tmp)
            executor = CeleryExecutor(celery_settings, options)
            executor.start()
            try:
                results["celery"] = [time_job(factory, executor, job_spec) for _ in range(args.jobs)]
            finally:
                executor.stop()
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        engine.dispose()

    print(f"{'executor':<9}{'job':>4}{'claimed s':>11}{'1st progress s':>16}{'done s':>9}")
    for name, jobs in results.items():
        for i, marks in enumerate(jobs):
            print(f"{name:<9}{i:>4}{marks['claimed']:>11.2f}{marks['first_progress']:>16.2f}{marks['done']:>9.2f}")
    out = {"benchmark": "bench_executors", "jobs": args.jobs, "max_tokens": args.max_tokens,
           "seconds": results, "load_average_1m": os.getloadavg()[0], "cpu_count": os.cpu_count(),
           "note": "celery job 0 includes the worker's own start (it was started just before)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
