"""Results documents: save (idempotent per job and attempt), load (re-assembled with head rows),
calibration artifacts, and importing a finished document as a succeeded job.

A document is stored without its ``heads`` list; each head row becomes a ``head_rows`` row with one
float column per metric of METHOD.md (other keys kept in ``extra``). Non-finite floats (NaN, inf)
are stored as null: JSON has no spelling for them.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from headq_jobs.store.jobs import JobStateError, get_job
from headq_jobs.store.models import (
    HEAD_KEYS,
    SHORT_TEXT,
    CalibrationArtifactRow,
    HeadRow,
    JobRow,
    ResultRow,
    utcnow,
)
from headq_spec.limits import INT32_MAX
from headq_spec.metrics import HEAD_METRICS


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (recursively, in dicts and lists) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def _head_row_values(job_id: str, attempt: int, index: int, row: Any) -> dict[str, Any]:
    """Column values of one head row; ``ValueError`` naming ``heads.<index>.<key>`` when malformed."""
    if not isinstance(row, dict):
        raise ValueError(f"heads.{index}: must be an object")
    values: dict[str, Any] = {"job_id": job_id, "attempt": attempt}
    for key in HEAD_KEYS:
        value = row.get(key)
        ok = isinstance(value, str) and 0 < len(value) <= SHORT_TEXT if key == "run" else (
            isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT32_MAX)
        if not ok:
            kind = (f"a string of 1 to {SHORT_TEXT} characters" if key == "run"
                    else f"an integer in [0, {INT32_MAX}]")
            raise ValueError(f"heads.{index}.{key}: must be {kind}, got {value!r}")
        values[key] = value
    for key in HEAD_METRICS:
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"heads.{index}.{key}: must be a number or null, got {value!r}")
        values[key] = None if value is None else finite_or_none(float(value))
    extra = {k: v for k, v in row.items() if k not in HEAD_KEYS and k not in HEAD_METRICS}
    values["extra"] = finite_or_none(extra) or None
    return values


def _write(session: Session, job_id: str, attempt: int, document: dict[str, Any],
           artifact_bytes: bytes | None, replace: bool = True) -> None:
    """Write ``document`` (+ artifact) for (job, attempt), replacing what it held unless the job is
    new (``replace=False``); the caller commits."""
    if not isinstance(document, dict):
        raise ValueError("document: must be a JSON object")
    heads = document.get("heads") or []
    if not isinstance(heads, list):
        raise ValueError("heads: must be a list")
    rows = [_head_row_values(job_id, attempt, i, row) for i, row in enumerate(heads)]
    for table in (HeadRow, ResultRow, CalibrationArtifactRow) if replace else ():
        session.execute(delete(table).where(table.job_id == job_id, table.attempt == attempt))
    body = finite_or_none({k: v for k, v in document.items() if k != "heads"})
    session.add(ResultRow(job_id=job_id, attempt=attempt, document=body, created_at=utcnow()))
    if rows:
        session.execute(insert(HeadRow), rows)
    if artifact_bytes is not None:
        session.add(CalibrationArtifactRow(job_id=job_id, attempt=attempt, blob=bytes(artifact_bytes)))


def save_results(session: Session, job_id: str, attempt: int, document: dict[str, Any],
                 artifact_bytes: bytes | None = None) -> None:
    """Store the results of one attempt. Idempotent: a second write for the same (job, attempt)
    replaces the first, never duplicates it."""
    get_job(session, job_id)
    try:
        _write(session, job_id, attempt, document, artifact_bytes)
        session.commit()
    except BaseException:
        session.rollback()
        raise


ImportItem = tuple[dict[str, Any], dict[str, Any], str | None, bytes | None]


def import_documents(session: Session, items: list[ImportItem]) -> list[JobRow]:
    """Store finished results documents as new succeeded jobs (attempt 1), all or none.

    Each item is ``(document, spec, label, artifact_bytes or None)``.
    """
    now = utcnow()
    jobs = [JobRow(id=str(uuid.uuid4()), kind=str(document["kind"]), label=label, spec=finite_or_none(spec),
                   model_id=str(document["model"]["id"]), status="succeeded", stage="imported", progress=1.0,
                   cancel_requested=False, attempts=1, max_attempts=1, created_at=now, started_at=now,
                   finished_at=now) for document, spec, label, _ in items]
    try:
        session.add_all(jobs)
        session.flush()
        for job, (document, _, _, artifact_bytes) in zip(jobs, items, strict=True):
            _write(session, job.id, 1, document, artifact_bytes, replace=False)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return jobs


def _latest_attempt(session: Session, job_id: str) -> int:
    """The newest attempt with stored results of a succeeded job; :class:`JobStateError` otherwise."""
    job = get_job(session, job_id)
    if job.status != "succeeded":
        raise JobStateError(f"job {job_id} is {job.status}; results exist only for succeeded jobs")
    attempt = session.scalar(select(func.max(ResultRow.attempt)).where(ResultRow.job_id == job_id))
    if attempt is None:
        raise JobStateError(f"job {job_id} succeeded but stored no results")
    return attempt


def load_head_rows(session: Session, job_id: str, attempt: int) -> list[dict[str, Any]]:
    """The head rows of one attempt, in the order they were written, as result-document dicts."""
    rows = session.scalars(select(HeadRow).where(HeadRow.job_id == job_id, HeadRow.attempt == attempt)
                           .order_by(HeadRow.id))
    return [{**{key: getattr(row, key) for key in HEAD_KEYS + HEAD_METRICS}, **(row.extra or {})}
            for row in rows]


def load_results(session: Session, job_id: str) -> dict[str, Any]:
    """The results document (with ``heads``) of the latest successful attempt.

    :class:`JobNotFound` for an unknown id, :class:`JobStateError` if the job has not succeeded.
    """
    attempt = _latest_attempt(session, job_id)
    result = session.get(ResultRow, (job_id, attempt))
    assert result is not None
    return {**result.document, "heads": load_head_rows(session, job_id, attempt)}


def load_calibration_artifact(session: Session, job_id: str) -> bytes | None:
    """The calibration bytes of the latest successful attempt (None if that attempt stored none)."""
    attempt = _latest_attempt(session, job_id)
    row = session.get(CalibrationArtifactRow, (job_id, attempt))
    return None if row is None else bytes(row.blob)
