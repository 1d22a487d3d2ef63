"""Where a committed result came from: the command line, the date, the commit (``git rev-parse``,
or ``$HEADQ_COMMIT`` on a machine that got the tree without its history) and the host."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path


def commit() -> str:
    """``$HEADQ_COMMIT`` when set (a copied tree's own ``.git`` may be stale: the GPU machine's was),
    else the commit checked out where this repository lies, or "unknown"."""
    if os.environ.get("HEADQ_COMMIT"):
        return os.environ["HEADQ_COMMIT"]
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                               cwd=Path(__file__).resolve().parents[1])
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip()
    except OSError:
        pass
    return "unknown"


def provenance() -> dict[str, str]:
    """command, date (UTC), commit and host of this process."""
    return {"command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "commit": commit(), "host": platform.node()}
