"""Checks of a job spec that need the server: where local model folders and dataset files may lie
(an answer never names the allowed directories), and whether a named calibration job exists and
fits. Each raises ``ValueError`` naming the field (the API answers 422)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from headq_jobs import paths
from headq_jobs.settings import Settings
from headq_jobs.store import JobNotFound, get_job
from headq_spec.jobs import JobSpec


def check_local_paths(spec: JobSpec, settings: Settings) -> None:
    """The spec's local paths against the server's allowed directories (``headq_jobs.paths``)."""
    paths.check_local_paths(spec, settings.allowed_model_dirs, settings.allowed_data_dirs)


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
