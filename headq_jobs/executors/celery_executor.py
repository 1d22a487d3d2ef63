"""The ``celery`` executor: job ids go to Celery workers through RabbitMQ or Redis, by task name.

The API process never imports the workers package; it sends ``headq.run_job`` with the job id.
A reconciler thread (every ``poll_s`` seconds):
1. requeues or fails jobs whose heartbeat went stale (a worker died; the broker's redelivery alone
   cannot tell a dead worker from a slow one);
2. (re)sends every queued job not yet sent for its current attempt: jobs submitted while the broker
   was down, requeued jobs (with the retry priority: ahead of jobs that never ran), and after a
   restart all queued jobs once (a duplicate message is harmless: only one worker can claim a queued
   job);
3. forces cancellation: a job still running ``cancel_grace_s`` after its cancel is revoked with
   SIGKILL and marked cancelled.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from kombu.exceptions import KombuError

from headq_jobs.executors.base import ExecutorUnavailable, Loop
from headq_jobs.executors.celery_config import TASK_NAME, celery_config, send_priority
from headq_jobs.executors.settings import ExecutorSettings, check_timing
from headq_jobs.settings import Settings
from headq_jobs.store.db import make_engine, make_session_factory, session_scope
from headq_jobs.store.jobs import finish, get_job, list_jobs, note_error, requeue_or_fail_stale

log = logging.getLogger(__name__)
BROKER_ERRORS = (KombuError, OSError)
RESEND_BATCH = 200


class CeleryExecutor:
    """Sends job ids to Celery workers (see the module docstring)."""

    def __init__(self, settings: Settings, options: ExecutorSettings | None = None) -> None:
        self.options = options or ExecutorSettings()
        check_timing(self.options, settings.heartbeat_timeout_s)
        self.settings = settings
        self.celery = Celery("headq-api")
        self.celery.conf.update(celery_config(settings.broker_url, queue=self.options.queue))
        self._factory = make_session_factory(make_engine(settings.database_url))
        self._sent: dict[str, int] = {}  # job id -> attempts count when it was last sent
        self._cancel_at: dict[str, float] = {}  # job id -> monotonic deadline of a forced stop
        self._lock = threading.Lock()
        self._loop = Loop("headq-reconciler", self.tick, self.options.poll_s)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def submit(self, job_id: str) -> None:
        """Send the task; with the broker down, note it on the (still queued) row and raise
        :class:`ExecutorUnavailable` (the API answers 503; the reconciler sends it later)."""
        with session_scope(self._factory) as session:
            attempts = get_job(session, job_id).attempts
            try:
                self._send(job_id, attempts)
            except BROKER_ERRORS as exc:
                message = (f"broker unavailable at {_redact(self.settings.broker_url)} ({exc}); "
                           "the job stays queued and is sent when the broker is back")
                note_error(session, job_id, message)
                raise ExecutorUnavailable(message) from exc

    def cancel(self, job_id: str) -> None:
        with self._lock:
            self._cancel_at.setdefault(job_id, time.monotonic() + self.options.cancel_grace_s)
        self._loop.wake()

    def ready(self) -> tuple[bool, str]:
        try:
            with self.celery.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=3)
        except BROKER_ERRORS as exc:
            return False, f"celery executor: broker {_redact(self.settings.broker_url)} unreachable ({exc})"
        return True, f"celery executor: broker {_redact(self.settings.broker_url)} reachable"

    def tick(self) -> None:
        """One reconciler round (stale heartbeats, unsent queued jobs, forced cancels)."""
        with self._lock, session_scope(self._factory) as session:
            for job_id, status in requeue_or_fail_stale(session, self.settings.heartbeat_timeout_s):
                log.warning("job %s: heartbeat stale, now %s", job_id, status)
            queued, _ = list_jobs(session, status="queued", limit=RESEND_BATCH)
            for job in queued:
                if self._sent.get(job.id) != job.attempts and not job.cancel_requested:
                    try:
                        self._send(job.id, job.attempts)
                    except BROKER_ERRORS as exc:
                        log.warning("broker still unavailable (%s); %d queued jobs wait", exc, len(queued))
                        break
            now = time.monotonic()
            for job_id, deadline in list(self._cancel_at.items()):
                if now >= deadline:
                    del self._cancel_at[job_id]
                    if get_job(session, job_id).status == "running":
                        self.celery.control.revoke(job_id, terminate=True, signal="SIGKILL")
                        finish(session, job_id, "cancelled", "cancelled: worker stopped after a "
                               f"{self.options.cancel_grace_s:g} s grace period")

    def _send(self, job_id: str, attempts: int) -> None:
        self.celery.send_task(TASK_NAME, args=[job_id], task_id=job_id, queue=self.options.queue, retry=False,
                              priority=send_priority(self.settings.broker_url, retry=attempts > 0))
        self._sent[job_id] = attempts


def _redact(url: str) -> str:
    """The broker URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"
