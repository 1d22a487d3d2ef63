"""What the README promises about the command line: ``scripts/demo.sh --help`` answers without
installing anything, and the README's examples that used to mislead (a token in single quotes, an
unencoded run name in a deep link, an undocumented ``HEADQ_URL``) stay fixed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_demo_script_help_does_not_reinstall(tmp_path: Path) -> None:
    """A copy of the script beside a ``setup.sh`` that fails and the real ``.venv``."""
    if not (ROOT / ".venv/bin/headq").exists():
        pytest.skip("no .venv: the script would install it first")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts/demo.sh").write_text((ROOT / "scripts/demo.sh").read_text())
    (tmp_path / "scripts/setup.sh").write_text("echo reinstalling >&2; exit 7\n")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    done = subprocess.run(["bash", str(tmp_path / "scripts/demo.sh"), "--help"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: headq demo") and "(default: 8192)" in done.stdout


def test_readme_examples() -> None:
    text = (ROOT / "README.md").read_text()
    assert 'H="Authorization: Bearer $HEADQ_API_TOKEN"' in text and "'Authorization: Bearer" not in text
    assert "run=k2%2Bheadq8" in text and "| `HEADQ_URL` |" in text
    assert "results/import -H \"$H\" -H 'Content-Type: application/json'" in text
