"""Checks of a job spec that need the server: where local model folders and dataset files may lie,
and whether a named calibration job exists and fits. Each raises ``ValueError`` naming the field
(the API answers 422)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from headq_jobs.settings import Settings
from headq_jobs.store import JobNotFound, get_job
from headq_spec.jobs import JobSpec, model_location


def _require_under(text: str, roots: list[Path], field: str, setting: str, what: str) -> None:
    """``ValueError`` naming ``field`` unless the path ``text`` lies under one of ``roots``."""
    try:
        path = Path(text).expanduser().resolve()
        allowed = [Path(d).expanduser().resolve() for d in roots]
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{field}: not a usable path ({exc})") from exc
    if not any(path.is_relative_to(root) for root in allowed):
        where = [str(d) for d in allowed] or "none configured"
        raise ValueError(f"{field}: {text!r} is {what} the allowed directories ({where}; {setting})")


def check_local_paths(spec: JobSpec, settings: Settings) -> None:
    """A model id that is a local path must lie under ``allowed_model_dirs``; dataset files under
    ``allowed_data_dirs`` (the workers read them on the server's machines)."""
    if model_location(spec.model.id) == "path":
        _require_under(spec.model.id, settings.allowed_model_dirs, "model.id", "HEADQ_ALLOWED_MODEL_DIRS",
                       "neither a hub id ('org/name') nor a folder under")
    for index, name in enumerate(spec.dataset.files or []):
        _require_under(name, settings.allowed_data_dirs, f"dataset.files.{index}", "HEADQ_ALLOWED_DATA_DIRS",
                       "not under")


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
