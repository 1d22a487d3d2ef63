"""Fixtures shared by several test folders: one headless Chromium for the whole session (Playwright's
sync API allows one running instance per thread, so every browser test must share it)."""

from __future__ import annotations

import pytest

from tests.chromium import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="session")
def browser():
    """A Playwright ``Browser`` on Debian's Chromium; skips the test where Chromium is absent."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium chromium-driver")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
