"""A real HeadQ Lab server on a free loopback port: uvicorn in a daemon thread serving the real
``create_app`` on SQLite in a given folder, the dashboard mounted under /dashboard."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn

from app.main import create_app
from headq_jobs.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """uvicorn (one worker) serving ``asgi_app`` on a free loopback port, in a daemon thread."""

    def __init__(self, asgi_app, port: int) -> None:
        self.app, self.port = asgi_app, port
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                asgi_app, host="127.0.0.1", port=port, workers=1, log_level="warning", lifespan="on"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_api(tmp: Path, token: str | None = None) -> LiveServer:
    """A real HeadQ Lab server (no executor: submitted jobs stay queued) on a free port;
    writes need ``token`` when one is given."""
    port = free_port()
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'headq.db'}",
        port=port,
        executor="none",
        dashboard=True,
        api_token=token,
    )
    return LiveServer(create_app(settings), port)
