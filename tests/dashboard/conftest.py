"""Fixtures of the dashboard tests: a real server (uvicorn in a thread, the real ``create_app``,
SQLite in a tmp dir, the dashboard mounted under /dashboard) with a synthetic results document
imported through ``POST /api/v1/results/import``, and headless Chromium driven by Playwright."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from app.main import create_app
from headq_jobs.settings import Settings
from tests.dashboard.synthetic import make_results

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


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


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with start_api(tmp_path_factory.mktemp("api")) as live:
        yield live


@pytest.fixture(scope="session")
def document() -> dict:
    """The synthetic results document imported into the session server."""
    return make_results(layers=4, heads=6, kv_heads=2, head_dim=16, window=32)


@pytest.fixture(scope="session")
def job_id(server: LiveServer, document: dict) -> str:
    """Id of the succeeded evaluation job created by importing ``document``."""
    resp = httpx.post(f"{server.url}/api/v1/results/import", json=document, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["items"][0]["id"]


class ConsolePage:
    """A fresh browser page that records console errors and uncaught page errors."""

    def __init__(self, browser) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))


@pytest.fixture
def page(browser) -> Iterator[ConsolePage]:
    console = ConsolePage(browser)
    yield console
    console.page.close()
