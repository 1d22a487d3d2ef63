"""Fixtures shared by several test folders: one headless Chromium for the whole session (Playwright's
sync API allows one running instance per thread, so every browser test must share it).

Without an NVIDIA device, Triton kernels are interpreted (``TRITON_INTERPRET=1``) in the whole
session: Triton fixes the mode when a kernel module is first imported, and any test importing the
quantized cache imports the kernels, so the interpreter tests must not depend on running first.
The in-process API clients' host name is allowed (``HEADQ_ALLOWED_HOSTS``) for the whole session."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testkit.chromium import CHROMIUM, CHROMIUM_ARGS

if not Path("/dev/nvidiactl").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# the in-process test clients (Starlette's, schemathesis's) send `Host: testserver`, a name the
# server's Host check (app/api/security.py) refuses unless listed; tests of that check set their own
os.environ.setdefault("HEADQ_ALLOWED_HOSTS", '["testserver"]')


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


_ROOT = Path(__file__).resolve().parents[1]
_STAMPS = pytest.StashKey[dict[str, int]]()


def _tracked_stamps() -> dict[str, int]:
    """mtime (ns) of every file git tracks here, or {} outside a git checkout."""
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=_ROOT, capture_output=True, check=True,
                               timeout=30).stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {n: (_ROOT / n).stat().st_mtime_ns for n in names if n and (_ROOT / n).is_file()}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STAMPS] = _tracked_stamps()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No test may rewrite a committed file (they write to temporary folders; docs are regenerated
    by scripts): a run that touched one fails, naming the files."""
    before = session.config.stash.get(_STAMPS, {})
    if os.environ.get("HEADQ_SCREENSHOTS") or not before:
        return  # scripts/screenshots.sh regenerates docs/screenshots on purpose
    after = _tracked_stamps()
    touched = sorted(n for n, stamp in before.items() if after.get(n, stamp) != stamp)
    if touched:
        session.config.get_terminal_writer().line(f"\ntests rewrote committed files: {touched}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
