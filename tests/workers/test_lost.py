"""``workers.lost.gone``: which worker names point at a process that can no longer run its attempt."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from workers.lost import gone


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_a_live_process_is_not_gone_and_a_reaped_one_is() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    name = f"{socket.gethostname()}:{child.pid}"
    try:
        assert not gone(name)
    finally:
        child.kill()
        child.wait()
    assert gone(name)


def test_a_killed_process_not_yet_reaped_is_gone() -> None:
    """A SIGKILLed pool process stays a zombie until its parent reaps it; a retried message can reach
    the next pool process in that gap, and must not take the dead attempt for a live one."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        child.kill()  # not waited for: a zombie until child.wait()
        deadline = time.monotonic() + 10
        while _state(child.pid) != "Z":
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        assert gone(f"{socket.gethostname()}:{child.pid}")
    finally:
        child.wait()


def test_names_of_another_host_or_kind_are_never_gone() -> None:
    assert not gone(None) and not gone("") and not gone("gone-host:1") and not gone("pod-7")
    assert not gone(f"{socket.gethostname()}:0") and not gone(f"{socket.gethostname()}:abc")
