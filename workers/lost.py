"""Is the process that a running attempt names as its worker gone? Then the attempt can be released
at once instead of after the heartbeat timeout."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def gone(worker: str | None) -> bool:
    """True when ``worker`` is ``HOST:PID`` (``run_job.worker_name``) of this host and no live
    process has that id any more (none at all, or a zombie: killed, its parent has not reaped it
    yet); False for another host, another kind of name, or a live process."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        pass
    return _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """True when ``pid`` has exited and waits to be reaped (state ``Z`` in ``/proc/PID/stat``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # on Linux: the process went between the two checks
        return Path("/proc/self").exists()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
