"""Where a result came from: the commit it records."""

from __future__ import annotations

import subprocess
from pathlib import Path

from testkit.provenance import commit


def test_headq_commit_wins_over_a_stale_git_checkout(monkeypatch):
    """A tree copied to another machine with an old ``.git`` (the GPU machine's) recorded that old
    commit; the commit named in ``$HEADQ_COMMIT`` is the one the results came from."""
    here = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    monkeypatch.setenv("HEADQ_COMMIT", "0123abc")
    assert commit() == "0123abc"
    monkeypatch.delenv("HEADQ_COMMIT")
    assert commit() == (here or "unknown")
