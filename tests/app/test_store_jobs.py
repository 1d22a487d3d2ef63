"""Job lifecycle in the store, on SQLite and PostgreSQL: create/list, idempotency, atomic claims,
heartbeats, progress, cancellation and stale-job recovery."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from headq_jobs import store
from headq_jobs.store.models import Base, JobRow, utcnow


def _new(session: Session, kind: str = "evaluation", model: str = "m/a", **kw: object) -> JobRow:
    job, created = store.create_job(session, kind=kind, spec={"kind": kind}, model_id=model, **kw)
    assert created
    return job


def test_create_get_and_list_with_filters_and_pages(session: Session) -> None:
    made = [_new(session, kind=("calibration" if i % 3 == 0 else "evaluation"), model=f"m/{i % 2}")
            for i in range(7)]
    assert store.get_job(session, made[0].id).status == "queued"
    items, total = store.list_jobs(session, limit=3, offset=0)
    assert total == 7 and len(items) == 3
    everything = [j.id for j in store.list_jobs(session, limit=100)[0]]
    assert sorted(everything) == sorted(j.id for j in made)
    pages = [j.id for off in (0, 3, 6) for j in store.list_jobs(session, limit=3, offset=off)[0]]
    assert pages == everything
    cal, n_cal = store.list_jobs(session, kind="calibration")
    assert n_cal == 3 and {j.kind for j in cal} == {"calibration"}
    m1, n_m1 = store.list_jobs(session, model_id="m/1", kind="evaluation")
    assert n_m1 == sum(1 for i in range(7) if i % 2 == 1 and i % 3 != 0)
    assert store.list_jobs(session, status="running") == ([], 0)
    with pytest.raises(store.JobNotFound):
        store.get_job(session, "nope")


def test_idempotency_key_returns_same_job_or_conflicts(session: Session) -> None:
    first = _new(session, idempotency_key="k1", request_hash="h1")
    again, created = store.create_job(session, kind="evaluation", spec={}, model_id="m/a",
                                      idempotency_key="k1", request_hash="h1")
    assert not created and again.id == first.id
    with pytest.raises(store.IdempotencyConflict, match="k1"):
        store.create_job(session, kind="evaluation", spec={}, model_id="m/a", idempotency_key="k1",
                         request_hash="h2")
    assert store.list_jobs(session)[1] == 1


def test_claim_is_fifo_and_counts_attempts(session: Session) -> None:
    a, b = _new(session), _new(session)
    got = store.claim_next_queued(session, "w1")
    assert got is not None and got.id == a.id and got.status == "running"
    assert got.attempts == 1 and got.worker == "w1" and got.started_at and got.heartbeat_at
    assert store.claim_next_queued(session, "w2").id == b.id  # type: ignore[union-attr]
    assert store.claim_next_queued(session, "w3") is None
    assert store.mark_running(session, a.id, "w4") is None  # already running


def test_concurrent_claims_take_each_job_once(clean_engine: Engine) -> None:
    factory = store.make_session_factory(clean_engine)
    with factory() as s:
        ids = {_new(s).id for _ in range(12)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        with factory() as s:
            while (job := store.claim_next_queued(s, name)) is not None:
                with lock:
                    claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(ids)


def test_heartbeat_progress_and_stale_attempt_guard(session: Session) -> None:
    job = _new(session)
    assert store.heartbeat(session, job.id) is False  # not running yet
    store.mark_running(session, job.id, "w")
    assert store.update_progress(session, job.id, 0.25, "window 1/4", attempt=1)
    row = store.get_job(session, job.id)
    assert (row.progress, row.stage) == (0.25, "window 1/4")
    assert not store.update_progress(session, job.id, 0.5, "x", attempt=7)
    with pytest.raises(ValueError, match="fraction"):
        store.update_progress(session, job.id, 1.5, "x")
    assert store.heartbeat(session, job.id, attempt=1) is False
    store.cancel_job(session, job.id)
    assert store.heartbeat(session, job.id, attempt=1) is True
    assert store.is_cancel_requested(session, job.id)


def test_cancel_semantics(session: Session) -> None:
    queued, running = _new(session), _new(session)
    store.mark_running(session, running.id, "w")
    assert store.cancel_job(session, queued.id).status == "cancelled"
    row = store.cancel_job(session, running.id)
    assert row.status == "running" and row.cancel_requested
    assert store.claim_next_queued(session, "w") is None
    assert store.finish(session, running.id, "cancelled")
    for job_id in (queued.id, running.id):
        with pytest.raises(store.JobStateError, match="cancelled"):
            store.cancel_job(session, job_id)
    with pytest.raises(store.JobNotFound):
        store.cancel_job(session, "missing")


def test_finish_rules(session: Session) -> None:
    job = _new(session)
    assert not store.finish(session, job.id, "succeeded")  # never ran
    store.mark_running(session, job.id, "w")
    with pytest.raises(ValueError, match="status"):
        store.finish(session, job.id, "running")
    assert not store.finish(session, job.id, "failed", "boom", attempt=2)
    assert store.finish(session, job.id, "failed", "boom", attempt=1)
    row = store.get_job(session, job.id)
    assert (row.status, row.error) == ("failed", "boom") and row.finished_at is not None


def _age(session: Session, job_id: str, seconds: float) -> None:
    session.execute(update(JobRow).where(JobRow.id == job_id)
                    .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))
    session.commit()


def test_requeue_or_fail_stale(session: Session) -> None:
    retry, last, cancelled, fresh = (_new(session, max_attempts=m) for m in (2, 1, 3, 3))
    for job in (retry, last, cancelled, fresh):
        store.mark_running(session, job.id, "dead")
    store.cancel_job(session, cancelled.id)
    for job in (retry, last, cancelled):
        _age(session, job.id, 600)
    changed = dict(store.requeue_or_fail_stale(session, heartbeat_timeout=60))
    assert changed == {retry.id: "queued", last.id: "failed", cancelled.id: "cancelled"}
    assert "no heartbeat" in (store.get_job(session, last.id).error or "")
    assert store.get_job(session, fresh.id).status == "running"
    again = store.claim_next_queued(session, "w2")
    assert again is not None and again.id == retry.id and again.attempts == 2
    _age(session, retry.id, 600)
    assert store.requeue_or_fail_stale(session, heartbeat_timeout=60) == [(retry.id, "failed")]
    assert not store.finish(session, retry.id, "succeeded", attempt=2)  # the lost worker cannot finish


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_racing_submissions_with_one_idempotency_key_make_one_job(clean_engine: Engine) -> None:
    factory = store.make_session_factory(clean_engine)
    barrier = threading.Barrier(4)
    ids: list[str] = []

    def submit() -> None:
        with factory() as s:
            barrier.wait(10)
            job, _ = store.create_job(s, kind="evaluation", spec={}, model_id="m/a", idempotency_key="same",
                                      request_hash="h")
            ids.append(job.id)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ids) == 4 and len(set(ids)) == 1
    with factory() as s:
        assert store.list_jobs(s)[1] == 1


def test_release_attempt_requeues_then_fails_by_the_retry_cap(session: Session) -> None:
    """A worker known gone releases only its own attempt, requeued until ``max_attempts``."""
    job, _ = store.create_job(session, kind="evaluation", spec={}, model_id="m", max_attempts=2)
    store.claim_next_queued(session, "w1")
    assert store.release_attempt(session, job.id, attempt=2, reason="gone") is None  # not this attempt
    assert store.release_attempt(session, job.id, attempt=1, reason="gone") == "queued"
    assert store.get_job(session, job.id).error == "gone (attempt 1 of 2); requeued"
    assert store.release_attempt(session, job.id, attempt=1, reason="gone") is None  # no longer running
    store.claim_next_queued(session, "w2")
    assert store.release_attempt(session, job.id, attempt=2, reason="gone again") == "failed"
    assert store.get_job(session, job.id).error == "gone again; gave up after 2 attempts"
