"""``/jobs`` and ``/calibrations``: submit, list, read and cancel jobs. Thin: validation lives in the
spec and in :mod:`app.api.checks`, state changes in :mod:`headq_jobs.store`."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from app.api.checks import check_calibration_reference, check_local_paths
from app.api.deps import ExecutorDep, SessionDep, SettingsDep, WriteAccess
from app.api.errors import ApiError
from app.api.problems import problems
from headq_jobs import store
from headq_jobs.store.jobs import resolve_job_id
from headq_spec.api import Job, JobItems, JobKind, JobPage, JobStatus
from headq_spec.jobs import JobSpec

log = logging.getLogger(__name__)
router = APIRouter(tags=["jobs"], responses=problems(400, 413, 422))


@router.post("/jobs", status_code=201, response_model=Job, dependencies=[WriteAccess],
             responses=problems(401, 409, 503))
def submit_job(spec: JobSpec, session: SessionDep, settings: SettingsDep, executor: ExecutorDep,
               response: Response,
               idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> Job:
    """Queue a calibration or evaluation. The same ``Idempotency-Key`` with the same body returns the
    job created the first time; with another body, 409."""
    if idempotency_key is not None:
        earlier = store.find_idempotent(session, idempotency_key, spec.fingerprint())
        if earlier is not None:  # a retry: answer as the first time, even if the world changed since
            response.headers["Idempotent-Replay"] = "true"
            return Job.model_validate(earlier)
    check_local_paths(spec, settings)
    check_calibration_reference(session, spec)
    job, created = store.create_job(session, kind=spec.kind, spec=spec.model_dump(mode="json"),
                                    model_id=spec.model.id, label=spec.label, idempotency_key=idempotency_key,
                                    request_hash=spec.fingerprint(), max_attempts=settings.max_attempts)
    if created and executor is not None:
        try:
            executor.submit(job.id)
        except Exception as exc:  # the row stays queued: the executor's reconciler re-sends it
            log.warning("executor could not take job %s: %s", job.id, exc)
            raise ApiError(503, f"job {job.id} is queued but the executor cannot take it now: {exc}") from exc
    if not created:
        response.headers["Idempotent-Replay"] = "true"
    return Job.model_validate(job)  # the committed row, as written: nothing after the commit may fail


@router.get("/jobs", response_model=JobPage)
def list_jobs(session: SessionDep, status: JobStatus | None = None, kind: JobKind | None = None,
              model: Annotated[str | None, Query(max_length=500)] = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50,
              offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> JobPage:
    """Jobs, newest first, filtered by status, kind and model id; ``total`` counts every match."""
    items, total = store.list_jobs(session, status=status, kind=kind, model_id=model, limit=limit,
                                   offset=offset)
    return JobPage(items=[Job.model_validate(j) for j in items], total=total)


@router.get("/jobs/{job_id}", response_model=Job, responses=problems(404, 409))
def get_job(job_id: str, session: SessionDep) -> Job:
    """One job: status, stage, progress, timestamps, attempts, worker, error. ``job_id`` may be a
    unique prefix of at least 8 characters (409 lists the matches of an ambiguous one)."""
    return Job.model_validate(store.get_job(session, resolve_job_id(session, job_id)))


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=Job, dependencies=[WriteAccess],
             responses=problems(401, 404, 409))
def cancel_job(job_id: str, session: SessionDep, executor: ExecutorDep) -> Job:
    """Queued: cancelled at once. Running: ``cancel_requested`` is set and the runner stops itself.
    Finished: 409. ``job_id`` may be a unique prefix, as in ``GET /jobs/{job_id}``."""
    job_id = resolve_job_id(session, job_id)
    job = store.cancel_job(session, job_id)
    if executor is not None:
        try:
            executor.cancel(job_id)
        except Exception as exc:  # the flag is stored; the runner still sees it
            log.warning("executor could not forward the cancel of job %s: %s", job_id, exc)
    return Job.model_validate(job)


@router.get("/calibrations", response_model=JobItems)
def list_calibrations(session: SessionDep,
                      model: Annotated[str | None, Query(max_length=500)] = None) -> JobItems:
    """Succeeded calibration jobs (optionally of one model), newest first."""
    items, _ = store.list_jobs(session, status="succeeded", kind="calibration", model_id=model, limit=10**6)
    return JobItems(items=[Job.model_validate(j) for j in items])
