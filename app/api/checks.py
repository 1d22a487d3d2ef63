"""Checks of a job spec that need the server: where local model folders and dataset files may lie
(an answer never names the allowed directories), and whether a named calibration job exists and
fits. Each raises ``ValueError`` naming the field (the API answers 422)."""

from __future__ import annotations

import glob
import itertools
from pathlib import Path

from sqlalchemy.orm import Session

from headq_jobs.settings import Settings
from headq_jobs.store import JobNotFound, get_job
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


def _require_under(text: str, roots: list[Path], field: str, pattern: bool = False) -> None:
    """``ValueError`` naming ``field`` unless the path ``text`` lies under one of ``roots``."""
    allowed = [root for d in roots for root in _resolved(str(d), field, False)]
    if not all(any(p.is_relative_to(root) for root in allowed) for p in _resolved(text, field, pattern)):
        raise ValueError(f"{field}: {text!r} is not in an allowed directory")


def check_local_paths(spec: JobSpec, settings: Settings) -> None:
    """A model id that is a local path must lie under ``allowed_model_dirs``; dataset files under
    ``allowed_data_dirs`` (the workers read them on the server's machines). A Hugging Face dataset
    is named by its hub id, never by a path."""
    if model_location(spec.model.id) == "path":
        _require_under(spec.model.id, settings.allowed_model_dirs, "model.id")
    if spec.dataset.source == "hf" and model_location(spec.dataset.name) != "hub":
        raise ValueError(f"dataset.name: {spec.dataset.name!r} is not a hub dataset id ('org/name')")
    for index, name in enumerate(spec.dataset.files or []):
        _require_under(name, settings.allowed_data_dirs, f"dataset.files.{index}", pattern=True)


def check_calibration_reference(session: Session, spec: JobSpec) -> None:
    """The evaluation's ``calibration_job`` must be a calibration of the same model that has not
    failed or been cancelled, kept at a rank no smaller than any HeadQ run asks for."""
    if spec.calibration_job is None:
        return
    try:
        job = get_job(session, spec.calibration_job)
    except JobNotFound as exc:
        raise ValueError(f"calibration_job: no job with id {spec.calibration_job!r}") from exc
    if job.kind != "calibration":
        raise ValueError(f"calibration_job: job {job.id} is an {job.kind}, not a calibration")
    if job.model_id != spec.model.id:
        raise ValueError(f"calibration_job: job {job.id} calibrated {job.model_id!r}, not {spec.model.id!r}")
    if job.status in ("failed", "cancelled"):
        raise ValueError(f"calibration_job: job {job.id} is {job.status}")
    kept = (job.spec.get("calibration") or {}).get("rank")
    for index, run in enumerate(spec.runs):
        if run.headq is not None and isinstance(kept, int) and run.headq.rank > kept:
            raise ValueError(f"runs.{index}.headq.rank: {run.headq.rank} exceeds the {kept} directions "
                             f"calibration {job.id} keeps")
