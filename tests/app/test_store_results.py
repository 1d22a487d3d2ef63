"""Results in the store, on SQLite and PostgreSQL: idempotent per (job, attempt), re-assembled with
head rows, non-finite floats as null, calibration artifacts, imports."""

from __future__ import annotations

import copy
import math

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from headq_jobs import store
from headq_jobs.store.models import HeadRow, ResultRow

from .resultgen import make_document


def _running(session: Session, kind: str = "evaluation") -> str:
    job, _ = store.create_job(session, kind=kind, spec={}, model_id="m/a")
    store.mark_running(session, job.id, "w")
    return job.id


def _count(session: Session, table: type) -> int:
    return session.scalar(select(func.count()).select_from(table)) or 0


def test_retried_write_replaces_and_load_reassembles(session: Session) -> None:
    job_id = _running(session)
    doc = make_document(seed=1)
    store.save_results(session, job_id, 1, make_document(seed=9))
    store.save_results(session, job_id, 1, doc)
    assert _count(session, HeadRow) == len(doc["heads"]) and _count(session, ResultRow) == 1
    with pytest.raises(store.JobStateError, match="running"):
        store.load_results(session, job_id)
    store.finish(session, job_id, "succeeded")
    assert store.load_results(session, job_id) == doc


def test_latest_attempt_wins(session: Session) -> None:
    job_id = _running(session)
    store.save_results(session, job_id, 1, make_document(seed=1))
    second = make_document(seed=2)
    store.save_results(session, job_id, 2, second)
    store.finish(session, job_id, "succeeded")
    assert store.load_results(session, job_id) == second


def test_non_finite_numbers_become_null_and_extra_keys_survive(session: Session) -> None:
    job_id = _running(session)
    doc = make_document(seed=3)
    doc["runs"][0]["perplexity"] = math.inf
    doc["heads"][0]["attn_kl"] = math.nan
    doc["heads"][1]["custom_metric"] = 0.5
    store.save_results(session, job_id, 1, copy.deepcopy(doc))
    store.finish(session, job_id, "succeeded")
    back = store.load_results(session, job_id)
    assert back["runs"][0]["perplexity"] is None and back["heads"][0]["attn_kl"] is None
    assert back["heads"][1]["custom_metric"] == 0.5
    assert back["heads"][2] == doc["heads"][2]


@pytest.mark.parametrize(("index", "key", "value"), [(0, "layer", -1), (2, "run", ""), (1, "fisher", "x"),
                                                     (3, "head", True)])
def test_malformed_head_rows_name_the_field(session: Session, index: int, key: str, value: object) -> None:
    job_id = _running(session)
    doc = make_document()
    doc["heads"][index][key] = value
    with pytest.raises(ValueError, match=rf"heads\.{index}\.{key}"):
        store.save_results(session, job_id, 1, doc)
    assert _count(session, HeadRow) == 0 and _count(session, ResultRow) == 0


def test_calibration_artifact_round_trip(session: Session) -> None:
    job_id = _running(session, "calibration")
    blob = bytes(range(256)) * 40
    store.save_results(session, job_id, 1, make_document(kind="calibration"), blob[:10])
    store.save_results(session, job_id, 1, make_document(kind="calibration"), blob)
    store.finish(session, job_id, "succeeded")
    assert store.load_calibration_artifact(session, job_id) == blob
    with pytest.raises(store.JobNotFound):
        store.load_calibration_artifact(session, "missing")


def test_import_documents_creates_succeeded_jobs_all_or_none(session: Session) -> None:
    doc = make_document(seed=5)
    broken = make_document(seed=6)
    broken["heads"][3]["layer"] = "x"
    with pytest.raises(ValueError, match=r"heads\.3\.layer"):
        store.import_documents(session, [(doc, {}, None, None), (broken, {}, None, None)])
    assert store.list_jobs(session)[1] == 0
    [job] = store.import_documents(session, [(doc, {"kind": "evaluation"}, "published", None)])
    row = store.get_job(session, job.id)
    assert (row.status, row.kind, row.model_id, row.label, row.attempts) == (
        "succeeded", "evaluation", doc["model"]["id"], "published", 1)
    assert store.load_results(session, job.id) == doc
