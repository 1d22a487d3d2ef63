"""``run_job`` in-process on both databases: the stored document is exactly what the pipeline
computes for the spec, a finished job is not run again, a dispatcher-claimed attempt is honoured,
an evaluation receives its calibration's artifact, and a model that cannot be loaded fails the job
with the loader's message; a cancel requested while running ends the job cancelled even when its
windows finished before the runner noticed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from headq_jobs.store import cancel_job, claim_next_queued, load_results
from tests.workers.conftest import add_job
from tests.workers.waiting import job_row, result_attempts
from workers.pipeline import execute
from workers.run_job import run_job


def assert_same_document(stored: Any, direct: Any, path: str = "") -> None:
    """Equal structure and values; floats to 1e-9 relative (the database stores float64)."""
    if isinstance(direct, dict):
        assert isinstance(stored, dict) and stored.keys() == direct.keys(), path
        for key in direct:
            if key != "timing":
                assert_same_document(stored[key], direct[key], f"{path}.{key}")
    elif isinstance(direct, list | tuple):
        assert isinstance(stored, list) and len(stored) == len(direct), path
        for i, (a, b) in enumerate(zip(stored, direct, strict=True)):
            assert_same_document(a, b, f"{path}[{i}]")
    elif isinstance(direct, float) and not isinstance(stored, bool):
        assert stored == pytest.approx(direct, rel=1e-9, abs=1e-300), path
    else:
        assert stored == direct, path


def test_stored_results_are_the_pipelines_and_a_finished_job_is_not_rerun(
        settings, options, sessions, make_spec) -> None:
    spec = make_spec(runs=2)
    with sessions() as s:
        job = add_job(s, spec)
    assert run_job(job.id, settings=settings, options=options) == "succeeded"
    row = job_row(sessions, job.id)
    assert (row.status, row.attempts, row.progress, row.error) == ("succeeded", 1, 1.0, None)
    with sessions() as s:
        stored = load_results(s, job.id)
    direct, artifact = execute(spec, calibration_blob=None, progress=lambda f, s: None,
                               should_stop=lambda: False,
                               allowed_model_dirs=[str(d) for d in settings.allowed_model_dirs],
                               allowed_data_dirs=[str(d) for d in settings.allowed_data_dirs])
    assert artifact is None
    assert_same_document(stored, direct)
    assert len(stored["heads"]) == 2 * 2 * 4  # runs x layers x query heads

    assert run_job(job.id, settings=settings, options=options) is None  # idempotent
    assert job_row(sessions, job.id).attempts == 1 and result_attempts(sessions, job.id) == [1]


def test_dispatcher_claimed_attempt_is_run_and_a_stale_one_is_not(settings, options, sessions,
                                                                  make_spec) -> None:
    with sessions() as s:
        job = add_job(s, make_spec())
        claimed = claim_next_queued(s, "local:test")
    assert claimed is not None and claimed.id == job.id and claimed.attempts == 1
    assert run_job(job.id, attempt=2, settings=settings, options=options) is None
    assert run_job(job.id, attempt=1, settings=settings, options=options) == "succeeded"
    assert run_job("no-such-job", settings=settings, options=options) is None


def test_evaluation_gets_its_calibration_artifact(settings, options, sessions, make_spec) -> None:
    with sessions() as s:
        calibration = add_job(s, make_spec("calibration"))
    assert run_job(calibration.id, settings=settings, options=options) == "succeeded"
    spec = make_spec(calibration_job=calibration.id)
    spec["runs"].append({"name": "k2_headq", "key": {"bits": 2, "axis": "per_channel", "group_size": 8},
                         "headq": {"rank": 2, "basis": "query_pca", "side_bits": 8}})
    with sessions() as s:
        evaluation = add_job(s, spec)
    assert run_job(evaluation.id, settings=settings, options=options) == "succeeded", \
        job_row(sessions, evaluation.id).error
    with sessions() as s:
        document = load_results(s, evaluation.id)
    assert document["calibration"]["job_id"] == calibration.id
    assert [run["name"] for run in document["runs"]] == ["k2", "k2_headq"]


def test_a_retrieval_job_gets_its_calibration_artifact(settings, options, sessions, make_spec) -> None:
    """A retrieval job's HeadQ run reads the calibration the job names (it failed with 'needs a
    calibration' when only evaluations loaded one)."""
    with sessions() as s:
        calibration = add_job(s, make_spec("calibration"))
    assert run_job(calibration.id, settings=settings, options=options) == "succeeded"
    spec = make_spec(calibration_job=calibration.id, max_tokens=4096)
    spec.update(kind="retrieval", retrieval={"lengths": [256], "depths": [50], "new_tokens": 2})
    spec["runs"] = [{"name": "k2_headq", "key": {"bits": 2, "axis": "per_channel", "group_size": 8},
                     "headq": {"rank": 2, "basis": "query_pca", "side_bits": 8}}]
    with sessions() as s:
        retrieval = add_job(s, spec)
    assert run_job(retrieval.id, settings=settings, options=options) == "succeeded", \
        job_row(sessions, retrieval.id).error
    with sessions() as s:
        document = load_results(s, retrieval.id)
    assert document["calibration"]["job_id"] == calibration.id
    assert [run["name"] for run in document["runs"]] == ["k2_headq"]


def test_model_that_cannot_be_loaded_fails_with_the_loaders_message(
        settings, options, sessions, make_spec, tiny_model: Path, models_root: Path) -> None:
    broken = models_root / "no-weights"
    broken.mkdir(exist_ok=True)
    shutil.copy(tiny_model / "config.json", broken / "config.json")
    shutil.copy(tiny_model / "tokenizer.json", broken / "tokenizer.json")
    shutil.copy(tiny_model / "tokenizer_config.json", broken / "tokenizer_config.json")
    with sessions() as s:
        job = add_job(s, make_spec(model_id=str(broken)))
    assert run_job(job.id, settings=settings, options=options) == "failed"
    row = job_row(sessions, job.id)
    assert row.status == "failed" and "no-weights" in row.error and "cannot load" in row.error
    assert result_attempts(sessions, job.id) == []


def test_evaluation_waits_for_a_calibration_still_running_elsewhere(settings, options, sessions,
                                                                    make_spec) -> None:
    """Two workers: the evaluation starts while its calibration is queued, waits, then reads it."""
    import threading

    with sessions() as s:
        calibration = add_job(s, make_spec("calibration"))
        spec = make_spec(calibration_job=calibration.id)
        spec["runs"].append({"name": "k2_headq", "key": {"bits": 2, "axis": "per_channel", "group_size": 8},
                             "headq": {"rank": 2, "basis": "query_pca", "side_bits": 8}})
        evaluation = add_job(s, spec)
    outcome: dict[str, str | None] = {}
    waiter = threading.Thread(target=lambda: outcome.update(
        status=run_job(evaluation.id, settings=settings, options=options)))
    waiter.start()
    deadline = time.monotonic() + 60
    while "waiting for calibration" not in (job_row(sessions, evaluation.id).stage or ""):
        assert time.monotonic() < deadline and waiter.is_alive(), job_row(sessions, evaluation.id).error
        time.sleep(0.1)
    assert run_job(calibration.id, settings=settings, options=options) == "succeeded"
    waiter.join(timeout=120)
    assert outcome["status"] == "succeeded", job_row(sessions, evaluation.id).error


def test_evaluation_fails_with_the_reason_when_its_calibration_failed(settings, options, sessions,
                                                                       make_spec) -> None:
    bad = make_spec("calibration", model_id=str(Path(settings.allowed_model_dirs[0]) / "no-such-model"))
    with sessions() as s:
        calibration = add_job(s, bad)
    assert run_job(calibration.id, settings=settings, options=options) == "failed"
    spec = make_spec(calibration_job=calibration.id)
    with sessions() as s:
        evaluation = add_job(s, spec)
    assert run_job(evaluation.id, settings=settings, options=options) == "failed"
    assert "calibration_job" in job_row(sessions, evaluation.id).error


def test_cancel_requested_while_running_ends_cancelled_even_if_the_windows_finished(
        settings, options, sessions, make_spec) -> None:
    """The heartbeat polls once at the start only (interval 1000 s), so the runner never sees the
    request between windows: the check before storing results must still honour it."""
    import threading

    with sessions() as s:
        job = add_job(s, make_spec(max_tokens=512, runs=2))
    outcome: dict[str, str | None] = {}
    runner = threading.Thread(target=lambda: outcome.update(status=run_job(
        job.id, settings=settings, options=options.model_copy(update={"heartbeat_s": 1000.0}))))
    runner.start()
    deadline = time.monotonic() + 60
    while job_row(sessions, job.id).status != "running":
        assert time.monotonic() < deadline and runner.is_alive(), job_row(sessions, job.id).error
        time.sleep(0.01)
    with sessions() as s:
        assert cancel_job(s, job.id).cancel_requested
    runner.join(timeout=120)
    row = job_row(sessions, job.id)
    assert outcome["status"] == "cancelled" and row.status == "cancelled", row.error
    assert row.error == "cancelled on request" and result_attempts(sessions, job.id) == []
