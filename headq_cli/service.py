"""``headq serve`` (API + dashboard + local executor in one process tree) and ``headq worker``.

Neither imports torch: ``serve`` runs uvicorn on ``app.main.create_app`` whose lifespan starts the
configured executor; ``worker`` runs a Celery worker whose pool children load the core per job.
"""

from __future__ import annotations

import argparse
from typing import Any

from headq_jobs.executors.gpus import default_concurrency
from headq_jobs.executors.settings import ExecutorSettings
from headq_jobs.settings import Settings, check_serve_address


def serve_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the flags given on the command line on top."""
    overrides: dict[str, Any] = {k: v for k, v in (("host", args.host), ("port", args.port),
                                                   ("executor", args.executor)) if v is not None}
    if args.allow_remote_without_token:
        overrides["allow_remote_without_token"] = True
    return Settings(**overrides)


def serve(args: argparse.Namespace) -> int:
    """Check the address is safe to bind (ValueError naming ``host`` otherwise), then serve."""
    import uvicorn

    from app.main import create_app

    settings = serve_settings(args)
    check_serve_address(settings)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level)
    return 0


def worker_argv(args: argparse.Namespace, options: ExecutorSettings) -> list[str]:
    """The ``celery worker`` arguments: one prefork process per GPU (1 on a CPU-only host)."""
    concurrency = args.concurrency or options.worker_concurrency or default_concurrency()
    argv = ["worker", "--pool=prefork", f"--concurrency={concurrency}", f"--queues={options.queue}",
            f"--loglevel={args.log_level.upper()}", "--without-gossip", "--without-mingle"]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    return argv


def worker(args: argparse.Namespace) -> int:
    """Run a Celery worker (blocks until it is stopped)."""
    from workers.celery_app import app

    options = ExecutorSettings()
    max_tasks = options.worker_max_tasks if args.max_tasks is None else args.max_tasks
    app.conf.worker_max_tasks_per_child = max_tasks or None
    app.worker_main(worker_argv(args, options))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` and ``worker``."""
    p = subparsers.add_parser("serve", help="run the API, the dashboard and the local executor")
    p.add_argument("--host", help="address to bind (default HEADQ_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default HEADQ_PORT or 8000)")
    p.add_argument("--executor", choices=("local", "celery", "none"), help="default HEADQ_EXECUTOR")
    p.add_argument("--allow-remote-without-token", action="store_true",
                   help="serve a non-loopback address without HEADQ_API_TOKEN (unsafe)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=serve)

    w = subparsers.add_parser("worker", help="run a Celery worker (one process per GPU)")
    w.add_argument("--concurrency", type=int, help="processes (default: one per GPU, 1 on CPU)")
    w.add_argument("--max-tasks", type=int, help="tasks per process before it is replaced; 0 = keep "
                   "processes (and their loaded model) alive; default HEADQ_WORKER_MAX_TASKS or 1")
    w.add_argument("--hostname", help="Celery node name (default celery@<host>)")
    w.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    w.set_defaults(func=worker)
