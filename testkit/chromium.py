"""Headless Chromium for the browser tests (dashboard pages, the study's PNG rendering): Debian's
``/usr/bin/chromium`` driven by Playwright (``.ci/run`` installs it)."""

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
