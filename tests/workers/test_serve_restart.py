"""``headq serve`` (API + local executor) SIGKILLed mid-job and started again on the same database:
the job ends exactly once. Its worker survives the server and finishes (attempt 1); or, if the
worker died with the server, the new server sees the stale heartbeat and runs attempt 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.client import HeadQClient
from headq_jobs.executors.settings import ExecutorSettings
from headq_jobs.executors.spawn import settings_env
from headq_jobs.settings import Settings
from tests.workers.conftest import LONG_JOB
from tests.workers.test_cli import free_port
from tests.workers.waiting import FINISHED, result_attempts, wait_for, wait_started, wait_status

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def local_worker_pids(job_id: str) -> list[int]:
    """Processes running ``workers.local_worker JOB_ID`` (found in /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"workers.local_worker" in argv and job_id.encode() in argv:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def serve(settings: Settings, options: ExecutorSettings, tmp_path: Path,
          reap: Callable[[int], None]) -> Iterator[Callable[[], tuple[subprocess.Popen[bytes], str]]]:
    """Start ``headq serve`` processes on the test database; each answers ``(process, url)``."""
    env = {**os.environ, **settings_env(settings, options), "HEADQ_DASHBOARD": "false"}
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        log = open(tmp_path / f"serve-{len(procs)}.log", "wb")  # noqa: SIM115 - the process owns it
        proc = subprocess.Popen([sys.executable, "-m", "headq_cli.main", "serve", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        procs.append(proc)
        reap(proc.pid)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                with HeadQClient(url) as api:
                    return api.ready()[0]
            except Exception:  # noqa: BLE001 - not listening yet
                assert proc.poll() is None, (tmp_path / f"serve-{len(procs) - 1}.log").read_text()
                return False
        wait_for(up, 60, "headq serve to be ready")
        return proc, url
    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.mark.parametrize("kill_worker_too", [False, True])
def test_server_killed_mid_job_and_restarted(serve, sessions, make_spec, tmp_path, reap,
                                             kill_worker_too: bool) -> None:
    first, url = serve()
    with HeadQClient(url) as api:
        job = api.submit(make_spec(**LONG_JOB))
    wait_started(sessions, job.id, 120, tmp_path)
    (worker,) = local_worker_pids(job.id)
    reap(worker)
    os.killpg(first.pid, signal.SIGKILL)
    if kill_worker_too:
        os.killpg(worker, signal.SIGKILL)
    first.wait(timeout=20)
    _, url = serve()
    row = wait_status(sessions, job.id, FINISHED, 180, tmp_path)
    assert row.status == "succeeded", row.error
    expected_attempt = 2 if kill_worker_too else 1
    assert row.attempts == expected_attempt
    assert result_attempts(sessions, job.id) == [expected_attempt]
    with HeadQClient(url) as api:
        assert api.get(job.id).status == "succeeded"
        assert len(api.results(job.id)["runs"]) == LONG_JOB["runs"]
