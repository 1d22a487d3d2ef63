"""Fixtures of the dashboard tests: a real server (``testkit.live_server``) with a synthetic results
document imported through ``POST /api/v1/results/import``, and headless Chromium driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from testkit.live_server import LiveServer, start_api
from testkit.synthetic import make_results


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
