"""The job store: SQLAlchemy models, sessions, migrations and the repository functions that the API
and the job runner (workers) call. Torch-free."""

from headq_jobs.store.db import make_engine, make_session_factory, migrate, ping, session_scope
from headq_jobs.store.jobs import (
    IdempotencyConflict,
    JobNotFound,
    JobStateError,
    cancel_job,
    claim_next_queued,
    create_job,
    find_idempotent,
    finish,
    get_job,
    heartbeat,
    is_cancel_requested,
    list_jobs,
    mark_running,
    note_error,
    release_attempt,
    requeue_or_fail_stale,
    update_progress,
)
from headq_jobs.store.models import FINISHED_STATUSES, JobRow
from headq_jobs.store.results import (
    import_documents,
    load_calibration_artifact,
    load_head_rows,
    load_results,
    save_results,
)
from headq_spec.limits import INT32_MAX
from headq_spec.metrics import HEAD_METRICS

__all__ = [
    "FINISHED_STATUSES", "HEAD_METRICS", "INT32_MAX", "IdempotencyConflict", "JobNotFound", "JobRow",
    "JobStateError", "cancel_job", "claim_next_queued", "create_job", "find_idempotent", "finish",
    "get_job", "heartbeat", "import_documents", "is_cancel_requested", "list_jobs",
    "load_calibration_artifact", "load_head_rows", "load_results", "make_engine", "make_session_factory",
    "mark_running", "migrate", "note_error", "ping", "release_attempt", "requeue_or_fail_stale",
    "save_results", "session_scope", "update_progress",
]
