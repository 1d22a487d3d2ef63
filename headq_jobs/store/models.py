"""SQLAlchemy 2 tables: jobs, results (documents without head rows), head_rows, calibration_artifacts.

Results are keyed by ``(job_id, attempt)`` so a retried write replaces instead of duplicating.
Timestamps are stored as naive UTC and read back timezone-aware (:class:`UTCDateTime`), the same on
SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from headq_spec.metrics import HEAD_METRICS

FINISHED_STATUSES = ("succeeded", "failed", "cancelled")
HEAD_KEYS = ("run", "layer", "head", "kv_head")
SHORT_TEXT = 200  # length of the label / stage / worker / run columns

JsonType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC, returned as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    """One submitted (or imported) job and its lifecycle."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    label: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JsonType)
    model_id: Mapped[str] = mapped_column(String(500), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    stage: Mapped[str | None] = mapped_column(String(200))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ResultRow(Base):
    """A results document of one attempt, without its head rows."""

    __tablename__ = "results"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class HeadRow(Base):
    """One (run, layer, query head) row of per-head metrics (a float column per name of
    ``HEAD_METRICS``, added below); unknown extra keys kept in ``extra``."""

    __tablename__ = "head_rows"
    __table_args__ = (Index("ix_head_rows_job_attempt", "job_id", "attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    run: Mapped[str] = mapped_column(String(200))
    layer: Mapped[int] = mapped_column(Integer)
    head: Mapped[int] = mapped_column(Integer)
    kv_head: Mapped[int] = mapped_column(Integer)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JsonType)


for _metric in HEAD_METRICS:  # one nullable float column per metric, from the one metric list
    setattr(HeadRow, _metric, mapped_column(_metric, Float, nullable=True))


class CalibrationArtifactRow(Base):
    """The bytes of ``Calibration.to_bytes()`` for one attempt of a calibration job."""

    __tablename__ = "calibration_artifacts"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
