"""Server settings, read from ``HEADQ_*`` environment variables (pydantic-settings).

Nothing is built at import time: :func:`get_settings` creates the settings once, on first use, and
tests pass their own :class:`Settings` to ``create_app``. :func:`check_serve_address` is the guard the
``headq serve`` command runs before binding a socket.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_NAMES = ("localhost",)


class Settings(BaseSettings):
    """Every knob of the server. Lists are given as JSON in the environment
    (``HEADQ_ALLOWED_MODEL_DIRS='["/models"]'``)."""

    model_config = SettingsConfigDict(env_prefix="HEADQ_", extra="ignore")

    database_url: str = "sqlite:///./.headq/headq.db"
    api_token: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    allow_remote_without_token: bool = False
    trust_remote_code: bool = False
    allowed_model_dirs: list[Path] = Field(default_factory=list)
    allowed_data_dirs: list[Path] = Field(default_factory=list)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    cors_origins: list[str] = Field(default_factory=list)
    executor: Literal["local", "celery", "none"] = "local"
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    heartbeat_timeout_s: float = Field(default=120.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=100)
    dashboard: bool = True

    @property
    def token(self) -> str | None:
        """The API token as plain text, or None when writes are open."""
        return self.api_token.get_secret_value() if self.api_token else None

    @property
    def api_base_url(self) -> str:
        """Where this server's REST API is reached from its own process (the dashboard uses it)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host  # an IPv6 address
        return f"http://{host}:{self.port}/api/v1"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, created from the environment on first call."""
    return Settings()


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_serve_address(settings: Settings) -> None:
    """Refuse to serve on a non-loopback host without a token, unless explicitly allowed.

    Raises ``ValueError`` naming ``host`` with what to do instead.
    """
    if is_loopback(settings.host) or settings.token or settings.allow_remote_without_token:
        return
    raise ValueError(f"host: refusing to listen on {settings.host!r} without HEADQ_API_TOKEN; set a token "
                     "or HEADQ_ALLOW_REMOTE_WITHOUT_TOKEN=1")
