"""The Celery executor end to end against the real RabbitMQ (and Redis) on localhost, with a real
``headq worker`` process started by the test: a job runs; a SIGKILLed pool process mid-job ends
with exactly one set of results (retried at once, ahead of the jobs queued after it); a requeued
job is sent ahead of jobs that never ran; a restarted API
(reconciler) mid-job does not run the job twice; a cancel is forced after the grace period; and the
compose layout (`headq serve` with the Celery executor + `headq worker`, PostgreSQL, RabbitMQ) runs
a job submitted over REST."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from headq_jobs.executors import CeleryExecutor
from headq_jobs.executors.settings import ExecutorSettings
from headq_jobs.executors.spawn import settings_env
from headq_jobs.settings import Settings
from headq_jobs.store import cancel_job, load_results, mark_running, release_attempt
from tests.workers.conftest import ENDLESS_JOB, LONG_JOB, add_job, make_options, make_settings
from tests.workers.waiting import (
    FINISHED,
    job_row,
    log_tail,
    result_attempts,
    wait_for,
    wait_started,
    wait_status,
)

pytestmark = [pytest.mark.services, pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)]
BROKERS = {"rabbitmq": ("amqp://guest:guest@127.0.0.1:5672//", 5672),
           "redis": ("redis://127.0.0.1:6379/0", 6379)}


@pytest.fixture(scope="module", params=["rabbitmq"])
def broker(request: pytest.FixtureRequest) -> str:
    url, port = BROKERS[request.param]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        pytest.skip(f"{request.param} is not running on localhost")
    return url


@pytest.fixture(scope="module")
def celery_options() -> ExecutorSettings:
    return make_options()


@pytest.fixture(scope="module")
def celery_settings(database_url: str, models_root: Path, corpus: Path, broker: str) -> Settings:
    """Celery executor on ``broker``; stale after 8 s (the runner beats before it is busy)."""
    return make_settings(database_url, models_root, corpus).model_copy(
        update={"executor": "celery", "broker_url": broker, "heartbeat_timeout_s": 8.0})


@pytest.fixture(scope="module")
def worker(celery_settings: Settings, celery_options: ExecutorSettings,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``headq worker`` (one pool process) on the module's queue, shared by its tests; answers the
    folder of its log. Killed with its pool at the end."""
    logs = tmp_path_factory.mktemp("celery-worker")
    env = {**os.environ, **settings_env(celery_settings, celery_options)}
    with open(logs / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "headq_cli.main", "worker", "--concurrency", "1",
                                 "--hostname", f"{celery_options.queue}@%h"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield logs
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


@pytest.fixture
def executors(celery_settings: Settings,
              celery_options: ExecutorSettings) -> Iterator[Callable[[], CeleryExecutor]]:
    """Start Celery executors (the API side: sends, reconciles); stopped at the end."""
    started: list[CeleryExecutor] = []

    def start() -> CeleryExecutor:
        executor = CeleryExecutor(celery_settings, celery_options)
        executor.start()
        started.append(executor)
        return executor
    yield start
    for executor in started:
        executor.stop()


def worker_pid(sessions, job_id: str) -> int:
    """The pool process running the job (``host:pid`` on the job row)."""
    return int(job_row(sessions, job_id).worker.rsplit(":", 1)[1])


@pytest.mark.parametrize("broker", ["rabbitmq", "redis"], indirect=True)
def test_job_runs_end_to_end_on_a_celery_worker(worker, executors, sessions, make_spec) -> None:
    with sessions() as s:
        job = add_job(s, make_spec(runs=2))
    executors().submit(job.id)
    row = wait_status(sessions, job.id, FINISHED, 120, worker)
    assert row.status == "succeeded", row.error
    assert row.attempts == 1 and row.worker.split(":")[0] == socket.gethostname()
    assert result_attempts(sessions, job.id) == [1]
    with sessions() as s:
        document = load_results(s, job.id)
    assert [run["name"] for run in document["runs"]] == ["k2", "k4"] and len(document["heads"]) == 16


def test_sigkilled_pool_process_is_retried_at_once_ahead_of_later_jobs(
        worker, celery_settings, celery_options, sessions, make_spec) -> None:
    """The broker hands the lost message back first and the next pool process releases the dead
    attempt: no wait for the heartbeat timeout (an hour here), and the job queued behind it waits."""
    never_stale = celery_settings.model_copy(update={"heartbeat_timeout_s": 3600.0})
    executor = CeleryExecutor(never_stale, celery_options)
    with sessions() as s:
        job = add_job(s, make_spec(**LONG_JOB))
    executor.submit(job.id)
    wait_started(sessions, job.id, 120, worker)
    with sessions() as s:
        later = add_job(s, make_spec())
    executor.submit(later.id)
    os.kill(worker_pid(sessions, job.id), signal.SIGKILL)
    row = wait_status(sessions, job.id, FINISHED, 180, worker)
    assert row.status == "succeeded" and row.attempts == 2, (row.error, log_tail(worker, 6000))
    after = wait_status(sessions, later.id, FINISHED, 120, worker)
    assert after.status == "succeeded" and row.finished_at <= after.started_at, log_tail(worker, 6000)
    assert result_attempts(sessions, job.id) == [2]


@pytest.mark.parametrize("broker", ["rabbitmq", "redis"], indirect=True)
def test_a_requeued_job_is_sent_ahead_of_jobs_that_never_ran(worker, celery_settings, celery_options,
                                                             sessions, make_spec) -> None:
    """While the one pool process is busy, two new jobs are sent, then a job whose first attempt
    was lost (requeued, as after a stale heartbeat); when the process is free, the retry runs first."""
    executor = CeleryExecutor(celery_settings, celery_options)
    with sessions() as s:
        busy = add_job(s, make_spec(**ENDLESS_JOB))
    executor.submit(busy.id)
    wait_started(sessions, busy.id, 120, worker)
    with sessions() as s:
        first, second, retried = (add_job(s, make_spec()) for _ in range(3))
        mark_running(s, retried.id, "gone-host:1")
        release_attempt(s, retried.id, 1, "worker gone-host:1 lost")
    executor.submit(first.id)
    executor.submit(second.id)
    executor.tick()  # the reconciler sends the requeued job (attempt 2), last
    with sessions() as s:
        cancel_job(s, busy.id)  # the busy runner stops at its next window, freeing the process
    rows = [wait_status(sessions, job.id, FINISHED, 180, worker) for job in (retried, first, second)]
    assert [row.status for row in rows] == ["succeeded"] * 3, [row.error for row in rows]
    assert rows[0].started_at < rows[1].started_at < rows[2].started_at


def test_restarted_api_does_not_run_a_running_job_twice(worker, executors, sessions,
                                                        make_spec) -> None:
    with sessions() as s:
        job = add_job(s, make_spec(**LONG_JOB))
    first = executors()
    first.submit(job.id)
    wait_started(sessions, job.id, 120, worker)
    first.stop()
    executors()  # a new API process: its reconciler re-sends queued jobs, watches running ones
    row = wait_status(sessions, job.id, FINISHED, 180, worker)
    assert row.status == "succeeded", row.error
    assert row.attempts == 1 and result_attempts(sessions, job.id) == [1]


def test_cancel_is_forced_after_the_grace_period(worker, celery_settings, celery_options, sessions,
                                                 make_spec) -> None:
    executor = CeleryExecutor(celery_settings, celery_options.model_copy(update={"cancel_grace_s": 0.0}))
    with sessions() as s:
        job = add_job(s, make_spec(**ENDLESS_JOB))
    executor.submit(job.id)
    wait_started(sessions, job.id, 120, worker)
    pid = worker_pid(sessions, job.id)
    with sessions() as s:
        cancel_job(s, job.id)
    executor.cancel(job.id)
    executor.tick()  # the reconciler round: revoke with SIGKILL, mark cancelled
    row = job_row(sessions, job.id)
    assert row.status == "cancelled" and "grace period" in row.error
    assert row.attempts == 1 and result_attempts(sessions, job.id) == []

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    wait_for(gone, 30, f"pool process {pid} to be terminated by the revoke")


def test_the_compose_process_layout_runs_a_job_over_rest(worker, celery_settings, celery_options,
                                                         sessions, make_spec, tmp_path) -> None:
    """docker-compose's layout without Docker: a ``headq serve`` API process (Celery executor,
    PostgreSQL) and the ``headq worker`` process on RabbitMQ; a job submitted over REST succeeds and
    its results come back over REST."""
    from app.client import HeadQClient
    from tests.workers.test_cli import free_port

    port = free_port()
    env = {**os.environ, **settings_env(celery_settings, celery_options)}
    with open(tmp_path / "serve.log", "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "headq_cli.main", "serve", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with HeadQClient(f"http://127.0.0.1:{port}") as api:
            def ready() -> bool | None:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    return api.ready()[0] or None
                except Exception:  # noqa: BLE001 - not listening yet
                    return None
            wait_for(ready, 60, "headq serve (celery executor) to be ready")
            job = api.submit(make_spec(runs=2), idempotency_key="layout-1")
            row = wait_status(sessions, job.id, FINISHED, 120, worker)
            assert row.status == "succeeded", row.error
            assert api.get(job.id).status == "succeeded"
            document = api.results(job.id)
        assert [run["name"] for run in document["runs"]] == ["k2", "k4"] and len(document["heads"]) == 16
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=20)
