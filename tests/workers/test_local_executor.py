"""The local executor end to end: a dispatcher thread claims queued jobs and runs each in a spawned
``python -m workers.local_worker`` process on the tiny Llama. Faults: the worker SIGKILLed mid-job
(retried, one set of results; or failed with the reason when no attempt is left), and cancellation
(cooperative, then forced after the grace period)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from headq_jobs.executors import LocalExecutor
from headq_jobs.executors.settings import ExecutorSettings
from headq_jobs.settings import Settings
from headq_jobs.store import cancel_job, load_results
from tests.workers.conftest import ENDLESS_JOB, LONG_JOB, add_job
from tests.workers.waiting import FINISHED, job_row, result_attempts, wait_for, wait_started, wait_status

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def start_local(settings: Settings, tmp_path: Path,
                reap: Callable[[int], None]) -> Iterator[Callable[..., LocalExecutor]]:
    """Start local executors (logs of their workers under ``tmp_path``); stopped and reaped at the end.
    ``heartbeat_timeout_s``: for tests about another way a worker ends (its exit code, the cancel
    grace period), a timeout long enough that a worker starved of CPU under a loaded CI machine is
    not declared lost first."""
    started: list[LocalExecutor] = []

    def start(options: ExecutorSettings, heartbeat_timeout_s: float | None = None) -> LocalExecutor:
        own = settings if heartbeat_timeout_s is None else settings.model_copy(
            update={"heartbeat_timeout_s": heartbeat_timeout_s})
        executor = LocalExecutor(own, options, log_dir=tmp_path)
        executor.start()
        started.append(executor)
        return executor
    yield start
    for executor in started:
        executor.stop()
        for pid in executor.worker_pids().values():
            reap(pid)


def test_job_runs_end_to_end_in_a_spawned_worker(start_local, options, sessions, make_spec, tmp_path) -> None:
    with sessions() as s:
        job = add_job(s, make_spec(runs=2))
    executor = start_local(options)
    executor.submit(job.id)
    row = wait_status(sessions, job.id, FINISHED, 120, tmp_path)
    assert row.status == "succeeded", row.error
    assert row.attempts == 1 and row.progress == 1.0 and row.worker.startswith("local:")
    assert result_attempts(sessions, job.id) == [1]
    with sessions() as s:
        document = load_results(s, job.id)
    assert [run["name"] for run in document["runs"]] == ["k2", "k4"]
    assert document["model"]["layers"] == 2 and document["model"]["heads"] == 4
    assert len(document["heads"]) == 2 * 2 * 4  # runs x layers x query heads
    assert executor.ready()[0]


def test_sigkilled_worker_is_retried_and_results_are_stored_once(
        start_local, options, sessions, make_spec, tmp_path) -> None:
    with sessions() as s:
        job = add_job(s, make_spec(**LONG_JOB))
    executor = start_local(options)
    wait_started(sessions, job.id, 120, tmp_path)
    os.killpg(executor.worker_pids()[job.id], signal.SIGKILL)
    row = wait_status(sessions, job.id, FINISHED, 180, tmp_path)
    assert row.status == "succeeded", row.error
    assert row.attempts == 2 and row.error is None
    assert result_attempts(sessions, job.id) == [2]


def test_sigkilled_worker_without_attempts_left_fails_with_the_reason(
        start_local, options, sessions, make_spec, tmp_path) -> None:
    with sessions() as s:
        job = add_job(s, make_spec(**ENDLESS_JOB), max_attempts=1)
    executor = start_local(options, heartbeat_timeout_s=120.0)
    wait_started(sessions, job.id, 120, tmp_path)
    pid = executor.worker_pids()[job.id]
    os.killpg(pid, signal.SIGKILL)
    row = wait_status(sessions, job.id, FINISHED, 60, tmp_path)
    assert row.status == "failed"
    assert row.error == f"worker process {pid} exited with code -9 before finishing; gave up after 1 attempts"
    assert result_attempts(sessions, job.id) == []


@pytest.mark.parametrize(("grace", "reason"), [(60.0, "cancelled on request"), (0.0, "grace period")])
def test_cancel_running_job(start_local, options, sessions, make_spec, tmp_path, grace, reason) -> None:
    """Grace 60 s: the runner stops itself at its next window. Grace 0: the dispatcher kills it."""
    with sessions() as s:
        job = add_job(s, make_spec(**ENDLESS_JOB))
    executor = start_local(options.model_copy(update={"cancel_grace_s": grace}), heartbeat_timeout_s=120.0)
    wait_started(sessions, job.id, 120, tmp_path)
    pid = executor.worker_pids()[job.id]
    with sessions() as s:
        cancel_job(s, job.id)
    executor.cancel(job.id)
    row = wait_status(sessions, job.id, FINISHED, 60, tmp_path)
    assert row.status == "cancelled" and reason in row.error
    assert result_attempts(sessions, job.id) == []
    wait_for(lambda: job.id not in executor.worker_pids(), 30, f"worker {pid} to exit and be reaped")


def test_one_worker_per_gpu_each_pinned_to_its_own_device(settings, options, sessions, make_spec,
                                                          tmp_path, monkeypatch, reap) -> None:
    """With two visible GPUs the dispatcher runs two jobs at once, each worker seeing one device
    (read from the worker's own environment; the jobs themselves run on the CPU here)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with sessions() as s:
        jobs = [add_job(s, make_spec(**LONG_JOB)), add_job(s, make_spec(**LONG_JOB)), add_job(s, make_spec())]
    executor = LocalExecutor(settings, options.model_copy(update={"worker_concurrency": None}),
                             log_dir=tmp_path)
    assert executor.concurrency == 2
    executor.start()
    try:
        def environ(pid: int) -> dict[str, str]:
            reap(pid)
            return dict(item.split("=", 1) for item in
                        Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)

        def two_workers_devices() -> set[str] | None:
            """The two workers' CUDA_VISIBLE_DEVICES, once both have exec'd (a process between
            fork and exec can show an empty environment)."""
            pids = executor.worker_pids()
            envs = [environ(pid) for pid in pids.values()] if len(pids) == 2 else []
            ok = envs and all("CUDA_VISIBLE_DEVICES" in e for e in envs)
            return {e["CUDA_VISIBLE_DEVICES"] for e in envs} if ok else None
        assert wait_for(two_workers_devices, 60, "two workers") == {"3", "5"}
        assert job_row(sessions, jobs[2].id).status == "queued"  # the third waits for a free GPU
        for job in jobs:
            assert wait_status(sessions, job.id, FINISHED, 180, tmp_path).status == "succeeded"
    finally:
        executor.stop()
        for pid in executor.worker_pids().values():
            reap(pid)
