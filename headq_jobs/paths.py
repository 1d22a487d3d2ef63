"""Where a job may read local files: a model folder under the allowed model directories, dataset
files under the allowed data directories, a Hugging Face dataset by hub id only. The API checks a
spec before it is stored and the worker again before it reads (a Celery worker on another host has
its own settings). Each check raises ``ValueError`` naming the field, never the allowed directories."""

from __future__ import annotations

import glob
import itertools
from collections.abc import Sequence
from pathlib import Path

from headq_spec.jobs import JobSpec, model_location

MAX_MATCHES = 10_000  # files one dataset.files pattern may match


def _resolved(text: str, field: str, pattern: bool) -> list[Path]:
    """``text`` with ``..`` and symbolic links resolved; for a glob ``pattern``, every file it matches
    now as well (the workers glob it again, so each must be allowed)."""
    try:
        path = Path(text).expanduser()
        matches: list[str] = []
        if pattern and any(c in text for c in "*?["):
            matches = list(itertools.islice(glob.iglob(str(path), recursive=True), MAX_MATCHES + 1))
        resolved = [p.resolve() for p in (path, *map(Path, matches))]
    except (OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{field}: not a usable path ({exc})") from exc
    if len(matches) > MAX_MATCHES:
        raise ValueError(f"{field}: {text!r} matches more than {MAX_MATCHES} files")
    return resolved


def require_under(text: str, roots: Sequence[str | Path], field: str, pattern: bool = False) -> None:
    """``ValueError`` naming ``field`` unless the path ``text`` lies under one of ``roots``."""
    allowed = [root for d in roots for root in _resolved(str(d), field, False)]
    if not all(any(p.is_relative_to(root) for root in allowed) for p in _resolved(text, field, pattern)):
        raise ValueError(f"{field}: {text!r} is not in an allowed directory")


def check_local_paths(spec: JobSpec, model_dirs: Sequence[str | Path] | None,
                      data_dirs: Sequence[str | Path] | None) -> None:
    """A model id that is a local path must lie under ``model_dirs``, dataset files under
    ``data_dirs`` (None: anywhere, for a person's own command line); a Hugging Face dataset is
    named by its hub id, never by a path."""
    if model_dirs is not None and model_location(spec.model.id) == "path":
        require_under(spec.model.id, model_dirs, "model.id")
    if spec.dataset.source == "hf" and model_location(spec.dataset.name) != "hub":
        raise ValueError(f"dataset.name: {spec.dataset.name!r} is not a hub dataset id ('org/name')")
    if data_dirs is not None:
        for index, name in enumerate(spec.dataset.files or []):
            require_under(name, data_dirs, f"dataset.files.{index}", pattern=True)
