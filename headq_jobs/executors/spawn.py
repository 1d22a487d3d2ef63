"""Start ``python -m workers.local_worker JOB_ID --attempt N`` in a fresh process (never a fork).

The child gets the server's settings through ``HEADQ_*`` environment variables (settings given to
``create_app`` in code reach it too) and, on a GPU host, exactly one device in
``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings

# Secrets a worker does not need stay out of its environment.
NOT_PASSED = frozenset({"api_token"})


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def settings_env(*models: BaseSettings) -> dict[str, str]:
    """``HEADQ_<FIELD>`` variables that rebuild ``models`` in another process (None fields omitted)."""
    env: dict[str, str] = {}
    for model in models:
        prefix = str(model.model_config.get("env_prefix", ""))
        for name, value in model.model_dump(mode="json").items():
            if name not in NOT_PASSED and value is not None:
                env[f"{prefix}{name}".upper()] = _env_value(value)
    return env


def spawn_worker(job_id: str, attempt: int, env: dict[str, str], device: str | None,
                 log_dir: Path | None = None) -> subprocess.Popen[bytes]:
    """Launch the worker for one claimed attempt, in its own session (a Ctrl-C meant for the server
    does not kill running jobs; a restarted server finds them by their heartbeats)."""
    child_env = {**os.environ, **env}
    if device is not None:
        child_env["CUDA_VISIBLE_DEVICES"] = device
    out = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(log_dir / f"{job_id}.{attempt}.log", "ab")  # noqa: SIM115 - the child owns it
    try:
        argv = [sys.executable, "-m", "workers.local_worker", job_id, "--attempt", str(attempt)]
        return subprocess.Popen(argv,
                                env=child_env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                start_new_session=True)
    finally:
        if out is not None:
            out.close()
