"""Fixtures shared by several test folders: one headless Chromium for the whole session (Playwright's
sync API allows one running instance per thread, so every browser test must share it).

Without an NVIDIA device, Triton kernels are interpreted (``TRITON_INTERPRET=1``) in the whole
session: Triton fixes the mode when a kernel module is first imported, and any test importing the
quantized cache imports the kernels, so the interpreter tests must not depend on running first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chromium import CHROMIUM, CHROMIUM_ARGS

if not Path("/dev/nvidiactl").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
