"""Unit tests of the torch-free executor pieces: GPU counting, child environment, timing rules,
the heartbeat thread, broker URL redaction, Celery configuration and worker arguments."""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time

import pytest

from headq_cli.service import worker_argv
from headq_jobs.executors.celery_config import TASK_NAME, celery_config
from headq_jobs.executors.celery_executor import _redact
from headq_jobs.executors.gpus import default_concurrency, gpu_ids
from headq_jobs.executors.settings import ExecutorSettings, check_timing
from headq_jobs.executors.spawn import settings_env
from headq_jobs.settings import Settings
from workers.celery_app import pin_gpu
from workers.heartbeat import Heartbeat


@pytest.mark.parametrize(("visible", "expected"), [("0,1,3", ["0", "1", "3"]), (" 2 , 5", ["2", "5"]),
                                                    ("", []), ("-1", []), ("GPU-abc", ["GPU-abc"])])
def test_gpu_ids_follow_cuda_visible_devices(visible: str, expected: list[str]) -> None:
    assert gpu_ids({"CUDA_VISIBLE_DEVICES": visible}) == expected
    assert default_concurrency({"CUDA_VISIBLE_DEVICES": visible}) == max(1, len(expected))


def test_gpu_ids_without_driver_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert gpu_ids({}) == []


def test_pin_gpu_gives_each_pool_child_one_device() -> None:
    env: dict[str, str] = {}
    assert [pin_gpu(i, ["4", "7"], env) for i in range(3)] == ["4", "7", "4"]
    assert env["CUDA_VISIBLE_DEVICES"] == "4"
    assert pin_gpu(0, [], env) is None and pin_gpu(None, ["1"], env) is None


def test_settings_env_rebuilds_the_same_settings_in_a_child(tmp_path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/x.db", allowed_model_dirs=[tmp_path],
                        trust_remote_code=True, heartbeat_timeout_s=42.5, api_token="secret")
    options = ExecutorSettings(heartbeat_s=0.5, worker_concurrency=3)
    env = settings_env(settings, options)
    assert "HEADQ_API_TOKEN" not in env
    code = ("from headq_jobs.settings import Settings;"
            "from headq_jobs.executors.settings import ExecutorSettings;"
            "import json; s=Settings(); o=ExecutorSettings();"
            "print(json.dumps([s.database_url, [str(p) for p in s.allowed_model_dirs], s.trust_remote_code,"
            " s.heartbeat_timeout_s, s.token, o.heartbeat_s, o.worker_concurrency]))")
    out = subprocess.run([sys.executable, "-c", code], env={"PATH": "/usr/bin", **env}, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == (f'["sqlite:///{tmp_path}/x.db", ["{tmp_path}"], true, 42.5, null, 0.5, 3]')


def test_stale_timeout_must_exceed_two_heartbeats() -> None:
    with pytest.raises(ValueError, match="heartbeat_timeout_s"):
        check_timing(ExecutorSettings(heartbeat_s=5), 10.0)
    check_timing(ExecutorSettings(heartbeat_s=5), 10.5)


def test_executor_settings_reject_bad_values_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADQ_HEARTBEAT_S", "-1")
    with pytest.raises(ValueError, match="heartbeat_s"):
        ExecutorSettings()


def test_heartbeat_beats_until_the_block_ends_and_reports_cancel() -> None:
    beats: list[float] = []
    cancel_after = 3

    def beat() -> bool:
        beats.append(time.monotonic())
        return len(beats) >= cancel_after

    with Heartbeat(beat, 0.05) as pulse:
        assert len(beats) == 1 and not pulse.should_stop()  # the first beat is immediate
        deadline = time.monotonic() + 5
        while not pulse.should_stop() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pulse.should_stop()
    count = len(beats)
    time.sleep(0.2)
    assert len(beats) == count  # stopped with the block
    assert not any(t.name == "headq-heartbeat" and t.is_alive() for t in threading.enumerate())


def test_heartbeat_survives_a_failing_beat() -> None:
    calls = []

    def beat() -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("database blip")
        return True

    with Heartbeat(beat, 0.02) as pulse:
        deadline = time.monotonic() + 5
        while not pulse.should_stop() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert pulse.should_stop() and len(calls) >= 2


@pytest.mark.parametrize(("url", "shown"), [
    ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
    ("redis://:p%40ss@host:6379/0", "redis://:***@host:6379/0"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_broker_password_is_never_shown(url: str, shown: str) -> None:
    assert _redact(url) == shown


def test_celery_config_is_json_only_late_ack_one_at_a_time() -> None:
    conf = celery_config("redis://x:1/0", queue="q1", max_tasks_per_child=0)
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["worker_max_tasks_per_child"] is None  # 0 = keep processes alive
    assert celery_config("redis://x:1/0")["worker_max_tasks_per_child"] == 1
    assert conf["task_routes"] == {TASK_NAME: {"queue": "q1"}}


def test_worker_argv_one_process_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    args = argparse.Namespace(concurrency=None, log_level="info", hostname=None)
    argv = worker_argv(args, ExecutorSettings(queue="jobs"))
    assert "--concurrency=3" in argv and "--queues=jobs" in argv and "--pool=prefork" in argv
    args.concurrency = 1
    assert "--concurrency=1" in worker_argv(args, ExecutorSettings())


def test_server_side_never_imports_torch(tmp_path) -> None:
    """The API process (``headq serve`` with an executor) and the Celery parent stay torch-free."""
    code = ("import sys; import headq_cli.main, workers.celery_app; from app.main import create_app;"
            "from headq_jobs.settings import Settings;"
            f"create_app(Settings(database_url='sqlite:///{tmp_path}/t.db', executor='local'));"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'headq_core'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
