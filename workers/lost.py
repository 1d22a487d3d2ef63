"""Is the process that a running attempt names as its worker gone? Then the attempt can be released
at once instead of after the heartbeat timeout."""

from __future__ import annotations

import os
import socket


def gone(worker: str | None) -> bool:
    """True when ``worker`` is ``HOST:PID`` (``run_job.worker_name``) of this host and no process
    has that id any more; False for another host, another kind of name, or a live process."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        pass
    return False
