"""``run_job(job_id)``: the one function both executors call to run a stored job.

Claim an attempt (or take the one a local dispatcher claimed; or, when the running attempt's
process on this host is gone, release it and claim the next: Celery sends the message of a dead
pool process back at the head of the queue), beat a heartbeat from a thread, run the spec through
``workers.pipeline.execute`` with progress and cancellation wired to the job row, store the results
keyed by ``(job, attempt)`` and finish the attempt. Idempotent: a job that is
not queued (already running elsewhere, succeeded, failed, cancelled) is left alone, and every write
is guarded by the attempt so a worker that was given up on can no longer change the row.
torch is imported only after the claim and the first heartbeat (it takes seconds to load), so a
freshly spawned worker is seen alive before it is busy importing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from headq_jobs.executors.settings import ExecutorSettings
from headq_jobs.settings import Settings, get_settings
from headq_jobs.store import (
    JobNotFound,
    JobRow,
    JobStateError,
    finish,
    get_job,
    heartbeat,
    load_calibration_artifact,
    make_engine,
    make_session_factory,
    mark_running,
    release_attempt,
    save_results,
    session_scope,
    update_progress,
)
from workers.heartbeat import Heartbeat
from workers.lost import gone

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.5


@lru_cache(maxsize=1)
def model_cache() -> Any:
    """This process's model cache: the next job on the same model reuses the loaded model (ADR 0002)."""
    from workers.pipeline import ModelCache

    return ModelCache()


@lru_cache(maxsize=4)
def _sessions(database_url: str) -> sessionmaker[Session]:
    return make_session_factory(make_engine(database_url))


def worker_name() -> str:
    """``host:pid`` of this process, recorded on the job row it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(session: Session, job_id: str, attempt: int | None) -> JobRow | None:
    """The job row this process may run: a queued job claimed now (``attempt`` None), or the running
    attempt a dispatcher claimed for it; None when there is nothing to do."""
    try:
        job = get_job(session, job_id)
    except JobNotFound:
        log.warning("job %s: not found, nothing to run", job_id)
        return None
    if attempt is not None:
        return job if job.status == "running" and job.attempts == attempt else None
    if job.status == "running" and gone(job.worker):  # retried now, not after the heartbeat timeout
        dead, attempt = job.worker, job.attempts
        status = release_attempt(session, job_id, attempt, f"worker process {dead} died")
        log.warning("job %s attempt %d: worker %s died, now %s", job_id, attempt, dead, status)
        job = get_job(session, job_id)
    if job.status != "queued":
        log.info("job %s is %s: not run again", job_id, job.status)
        return None
    return mark_running(session, job_id, f"{worker_name()}")


class _Progress:
    """The ``progress(fraction, stage)`` callback: writes to the row, at most every 0.5 s unless the
    stage changes or the work is done."""

    def __init__(self, factory: sessionmaker[Session], job_id: str, attempt: int) -> None:
        self._factory, self._job_id, self._attempt = factory, job_id, attempt
        self._last: tuple[float, str] = (float("-inf"), "")

    def __call__(self, fraction: float, stage: str) -> None:
        now = time.monotonic()
        if stage == self._last[1] and fraction < 1.0 and now - self._last[0] < PROGRESS_EVERY_S:
            return
        self._last = (now, stage)
        with session_scope(self._factory) as session:
            update_progress(session, self._job_id, min(max(float(fraction), 0.0), 1.0), stage, self._attempt)


class _Stopped(Exception):
    """Cancellation requested before the core was loaded."""


def _calibration_blob(factory: sessionmaker[Session], job: JobRow, options: ExecutorSettings,
                      should_stop: Callable[[], bool]) -> bytes | None:
    """The calibration artifact an evaluation names (``calibration_job``), if any. While that
    calibration is still queued or running (another GPU may hold it) this waits, polling, up to
    ``options.calibration_wait_s``; a calibration that failed or was cancelled fails the evaluation."""
    kind = job.spec.get("kind")
    calibration_job = job.spec.get("calibration_job") if kind in ("evaluation", "retrieval") else None
    if not calibration_job:
        return None
    deadline = time.monotonic() + options.calibration_wait_s
    while True:
        with session_scope(factory) as session:
            try:
                status = get_job(session, calibration_job).status
                if status not in ("queued", "running"):
                    return load_calibration_artifact(session, calibration_job)
            except (JobNotFound, JobStateError) as exc:
                raise ValueError(f"calibration_job: {exc}") from exc
            if time.monotonic() > deadline:
                raise ValueError(f"calibration_job: {calibration_job} still {status} after "
                                 f"{options.calibration_wait_s:g} s")
            update_progress(session, job.id, 0.0, f"waiting for calibration {calibration_job}", job.attempts)
        if should_stop():
            raise _Stopped
        time.sleep(options.poll_s)



def _execute(factory: sessionmaker[Session], job: JobRow, settings: Settings, options: ExecutorSettings,
             should_stop: Callable[[], bool]) -> tuple[str, str | None]:
    """Run the pipeline and store its results; the final ``(status, error)`` of the attempt."""
    try:  # imported only now, after the claim and the first heartbeat: loading torch takes seconds
        from headq_core.errors import Cancelled
        from workers.pipeline import execute
    except ImportError as exc:
        return "failed", f"the worker cannot load the core: {type(exc).__name__}: {exc}"
    try:
        blob = _calibration_blob(factory, job, options, should_stop)
        document, artifact = execute(
            job.spec, calibration_blob=blob, progress=_Progress(factory, job.id, job.attempts),
            should_stop=should_stop, model_cache=model_cache(),
            allowed_model_dirs=[str(d) for d in settings.allowed_model_dirs],
            allowed_data_dirs=[str(d) for d in settings.allowed_data_dirs],
            trust_remote_code=settings.trust_remote_code)
        with session_scope(factory) as session:
            current = get_job(session, job.id)
            if current.status != "running" or current.attempts != job.attempts:
                return "failed", "attempt superseded before its results were stored"
            if current.cancel_requested:  # asked while running: the job ends cancelled, as the API said
                raise Cancelled("cancel requested before the results were stored")
            save_results(session, job.id, job.attempts, document, artifact)
    except (Cancelled, _Stopped):
        return "cancelled", "cancelled on request"
    except Exception as exc:  # noqa: BLE001 - any failure ends the attempt with its reason
        log.exception("job %s attempt %d failed", job.id, job.attempts)
        return "failed", f"{type(exc).__name__}: {exc}"
    return "succeeded", None


def run_job(job_id: str, *, attempt: int | None = None, settings: Settings | None = None,
            options: ExecutorSettings | None = None) -> str | None:
    """Run one job; returns the attempt's final status, or None when there was nothing to run.

    ``attempt``: the attempt a local dispatcher already claimed (None: claim a queued job here).
    """
    settings = settings or get_settings()
    options = options or ExecutorSettings()
    factory = _sessions(settings.database_url)
    with session_scope(factory) as session:
        job = claim(session, job_id, attempt)
    if job is None:
        return None
    log.info("job %s attempt %d: running in %s", job_id, job.attempts, worker_name())

    def beat() -> bool:
        with session_scope(factory) as session:
            return heartbeat(session, job_id, job.attempts)

    with Heartbeat(beat, options.heartbeat_s) as pulse:
        status, error = _execute(factory, job, settings, options, pulse.should_stop)
    with session_scope(factory) as session:
        if not finish(session, job_id, status, error, attempt=job.attempts):
            log.warning("job %s attempt %d: no longer current, outcome %s dropped", job_id, job.attempts,
                        status)
            return None
    return status
