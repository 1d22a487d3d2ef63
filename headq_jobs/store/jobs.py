"""Job lifecycle: create, read, list, cancel, and the runner's claim / heartbeat / progress / finish.

Every function takes a :class:`~sqlalchemy.orm.Session`, does one unit of work and commits it
(reads too: the connection goes back to the pool at once, not when the session closes).
State changes are guarded ``UPDATE ... WHERE status = ...`` statements, so two workers (or a worker
and the API) racing on one job cannot both win. Runner calls may pass ``attempt`` so that a worker
which was given up on (and its job requeued) can no longer touch the row.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from headq_jobs.store.models import FINISHED_STATUSES, SHORT_TEXT, JobRow, utcnow

MIN_ID_PREFIX = 8  # characters of a short id (the dashboard shows the first 8)
_LISTED_MATCHES = 10  # ids an ambiguity error names


class JobNotFound(LookupError):
    """No job has this id."""


class AmbiguousJobId(LookupError):
    """A short id is the prefix of several jobs' ids (the API answers 409 listing them)."""


class JobStateError(RuntimeError):
    """The job is in a state that does not allow the operation (the API answers 409)."""


class IdempotencyConflict(RuntimeError):
    """The idempotency key was used before with a different request body (the API answers 409)."""


def create_job(session: Session, *, kind: str, spec: dict[str, Any], model_id: str, label: str | None = None,
               idempotency_key: str | None = None, request_hash: str | None = None, max_attempts: int = 3,
               status: str = "queued") -> tuple[JobRow, bool]:
    """Insert a job; returns ``(job, created)``. With an idempotency key already used for the same
    ``request_hash`` the earlier job is returned with ``created=False``; for a different hash,
    :class:`IdempotencyConflict`."""
    if idempotency_key is not None:
        existing = find_idempotent(session, idempotency_key, request_hash)
        if existing is not None:
            return existing, False
    now = utcnow()
    job = JobRow(id=str(uuid.uuid4()), kind=kind, label=label, spec=spec, model_id=model_id, status=status,
                 progress=1.0 if status == "succeeded" else 0.0, cancel_requested=False, attempts=0,
                 max_attempts=max_attempts, idempotency_key=idempotency_key, request_hash=request_hash,
                 created_at=now, finished_at=now if status in FINISHED_STATUSES else None,
                 stage=None, worker=None, error=None, started_at=None, heartbeat_at=None)  # all loaded
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        if idempotency_key is None:
            raise
        existing = find_idempotent(session, idempotency_key, request_hash)
        if existing is None:
            raise
        return existing, False
    return job, True


def find_idempotent(session: Session, key: str, request_hash: str | None) -> JobRow | None:
    """The job created earlier with this idempotency key (None if none); :class:`IdempotencyConflict`
    if it was created from a request with another hash."""
    job = session.scalars(select(JobRow).where(JobRow.idempotency_key == key)).first()
    session.commit()
    if job is not None and job.request_hash != request_hash:
        raise IdempotencyConflict(f"Idempotency-Key {key!r} was used for a different request (job {job.id})")
    return job


def get_job(session: Session, job_id: str) -> JobRow:
    """The job with this id (fresh from the database), or :class:`JobNotFound`."""
    job = None if "\x00" in job_id else session.get(JobRow, job_id, populate_existing=True)
    session.commit()
    if job is None:
        raise JobNotFound(f"job {job_id!r} not found")
    return job


def resolve_job_id(session: Session, job_id: str) -> str:
    """The full id of the job whose id is ``job_id``, or starts with it (a unique prefix of at least
    ``MIN_ID_PREFIX`` characters); :class:`JobNotFound` or :class:`AmbiguousJobId` otherwise."""
    matches: list[str] = []
    if "\x00" not in job_id:
        same_or_longer = JobRow.id.startswith(job_id, autoescape=True) if len(job_id) >= MIN_ID_PREFIX \
            else JobRow.id == job_id
        query = select(JobRow.id).where(same_or_longer).order_by(JobRow.id).limit(_LISTED_MATCHES + 1)
        matches = list(session.scalars(query))
        session.commit()
    if job_id in matches or len(matches) == 1:
        return job_id if job_id in matches else matches[0]
    if not matches:
        raise JobNotFound(f"job {job_id!r} not found")
    more = ", ..." if len(matches) > _LISTED_MATCHES else ""
    raise AmbiguousJobId(f"job id prefix {job_id!r} matches several jobs: "
                         f"{', '.join(matches[:_LISTED_MATCHES])}{more}")


def list_jobs(session: Session, *, status: str | None = None, kind: str | None = None,
              model_id: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[JobRow], int]:
    """Jobs matching the filters, newest first, one page of them, and the total count."""
    query = select(JobRow)
    for column, value in ((JobRow.status, status), (JobRow.kind, kind), (JobRow.model_id, model_id)):
        if value is not None and "\x00" in value:  # no stored text holds NUL (PostgreSQL cannot)
            return [], 0
        if value is not None:
            query = query.where(column == value)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    newest_first = query.order_by(JobRow.created_at.desc(), JobRow.id)
    page = list(session.scalars(newest_first.limit(limit).offset(offset)))
    session.commit()
    return page, total


def running_workers(session: Session, prefix: str, heartbeat_timeout: float) -> dict[str, str]:
    """``{job id: worker}`` of the running attempts whose worker name starts with ``prefix`` and
    whose heartbeat is younger than ``heartbeat_timeout`` seconds: the work alive now, whichever
    process started it."""
    cutoff = utcnow() - timedelta(seconds=heartbeat_timeout)
    rows = session.execute(select(JobRow.id, JobRow.worker).where(
        JobRow.status == "running", JobRow.worker.startswith(prefix, autoescape=True),
        JobRow.heartbeat_at >= cutoff)).all()
    session.commit()
    return {job_id: worker or "" for job_id, worker in rows}


def _guarded_update(session: Session, job_id: str, where: Sequence[Any], **values: Any) -> bool:
    """Apply ``values`` to the job if ``where`` holds; True when a row changed."""
    result = session.execute(update(JobRow).where(JobRow.id == job_id, *where).values(**values))
    session.commit()
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def _attempt_guard(attempt: int | None) -> list[Any]:
    return [JobRow.status == "running"] + ([] if attempt is None else [JobRow.attempts == attempt])


def cancel_job(session: Session, job_id: str) -> JobRow:
    """Queued -> cancelled at once; running -> ``cancel_requested`` (the runner stops itself);
    finished -> :class:`JobStateError`."""
    job = get_job(session, job_id)
    if job.status == "queued" and _guarded_update(
            session, job_id, [JobRow.status == "queued"], status="cancelled", cancel_requested=True,
            finished_at=utcnow(), stage="cancelled"):
        return get_job(session, job_id)
    if job.status in ("queued", "running") and _guarded_update(
            session, job_id, [JobRow.status == "running"], cancel_requested=True):
        return get_job(session, job_id)
    job = get_job(session, job_id)
    raise JobStateError(f"job {job_id} is {job.status}; only queued or running jobs can be cancelled")


def note_error(session: Session, job_id: str, message: str) -> None:
    """Record a message on a job without changing its status (for example: broker unreachable)."""
    _guarded_update(session, job_id, [], error=message)


def claim_next_queued(session: Session, worker: str) -> JobRow | None:
    """Atomically take the oldest queued job for ``worker`` (status running, attempts + 1), or None.

    PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``; SQLite: a guarded UPDATE, retried on a lost race.
    """
    oldest = (select(JobRow.id).where(JobRow.status == "queued", JobRow.cancel_requested.is_(False))
              .order_by(JobRow.created_at, JobRow.id).limit(1))
    if session.get_bind().dialect.name == "postgresql":
        oldest = oldest.with_for_update(skip_locked=True)
    for _ in range(20):
        job_id = session.scalar(oldest)
        if job_id is None:
            session.commit()
            return None
        claimed = mark_running(session, job_id, worker)
        if claimed is not None:
            return claimed
    return None


def mark_running(session: Session, job_id: str, worker: str) -> JobRow | None:
    """Start an attempt of a queued job for ``worker``; None if it is no longer queued."""
    now = utcnow()
    claimable = [JobRow.status == "queued", JobRow.cancel_requested.is_(False)]
    if not _guarded_update(session, job_id, claimable, status="running", worker=worker[:SHORT_TEXT],
                           attempts=JobRow.attempts + 1, started_at=now, heartbeat_at=now, finished_at=None,
                           progress=0.0, stage="starting"):
        return None
    return get_job(session, job_id)


def heartbeat(session: Session, job_id: str, attempt: int | None = None) -> bool:
    """Stamp ``heartbeat_at`` of a running job; returns ``cancel_requested`` (False if not running)."""
    if not _guarded_update(session, job_id, _attempt_guard(attempt), heartbeat_at=utcnow()):
        return False
    return get_job(session, job_id).cancel_requested


def update_progress(session: Session, job_id: str, fraction: float, stage: str,
                    attempt: int | None = None) -> bool:
    """Set progress (``fraction`` in [0, 1]) and stage of a running job; False if it is not running."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction: must lie in [0, 1], got {fraction!r}")
    return _guarded_update(session, job_id, _attempt_guard(attempt), progress=float(fraction),
                           stage=stage[:SHORT_TEXT], heartbeat_at=utcnow())


def is_cancel_requested(session: Session, job_id: str) -> bool:
    """Whether someone asked this job to stop (the runner's ``should_stop``)."""
    requested = bool(session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id)))
    session.commit()
    return requested


def finish(session: Session, job_id: str, status: str, error: str | None = None,
           attempt: int | None = None) -> bool:
    """End a running job as succeeded / failed / cancelled; False if it was not running (or the
    attempt is stale)."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"status: must be one of {FINISHED_STATUSES}, got {status!r}")
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": utcnow(), "stage": status}
    if status == "succeeded":
        values["progress"] = 1.0
    return _guarded_update(session, job_id, _attempt_guard(attempt), **values)


def requeue_or_fail_stale(session: Session, heartbeat_timeout: float,
                          max_attempts: int | None = None) -> list[tuple[str, str]]:
    """Running jobs whose heartbeat is older than ``heartbeat_timeout`` seconds, released by
    :func:`_release` with the reason. Returns ``[(job_id, new_status)]``."""
    cutoff: datetime = utcnow() - timedelta(seconds=heartbeat_timeout)
    stale = session.scalars(select(JobRow).where(JobRow.status == "running", JobRow.heartbeat_at < cutoff))
    changed: list[tuple[str, str]] = []
    for job in list(stale):
        reason = f"worker {job.worker or '?'} lost: no heartbeat for over {heartbeat_timeout:g} s"
        status = _release(session, job, reason, max_attempts, [JobRow.heartbeat_at < cutoff])
        if status is not None:
            changed.append((job.id, status))
    return changed


def release_attempt(session: Session, job_id: str, attempt: int, reason: str) -> str | None:
    """End attempt ``attempt`` of a running job whose worker is known gone (it exited early), by the
    same rules and retry cap as a stale heartbeat; the new status, or None if that attempt is no
    longer running."""
    job = get_job(session, job_id)
    if job.status != "running" or job.attempts != attempt:
        return None
    return _release(session, job, reason, None, [])


def _release(session: Session, job: JobRow, reason: str, max_attempts: int | None,
             where: Sequence[Any]) -> str | None:
    """A running attempt whose worker is gone: requeued if attempts remain (the job's own
    ``max_attempts`` unless given), else failed with the reason; cancelled if a cancel was requested.
    The new status, or None when another writer changed the row first."""
    cap = job.max_attempts if max_attempts is None else max_attempts
    if job.cancel_requested:
        values: dict[str, Any] = {"status": "cancelled", "finished_at": utcnow(), "error": reason}
    elif job.attempts < cap:
        values = {"status": "queued", "worker": None, "stage": "requeued", "progress": 0.0,
                  "error": f"{reason} (attempt {job.attempts} of {cap}); requeued"}
    else:
        values = {"status": "failed", "finished_at": utcnow(),
                  "error": f"{reason}; gave up after {job.attempts} attempts"}
    guard = [JobRow.status == "running", JobRow.attempts == job.attempts, *where]
    return values["status"] if _guarded_update(session, job.id, guard, **values) else None
