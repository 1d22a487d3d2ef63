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
MIN_TOKEN_CHARS = 16  # a shorter HEADQ_API_TOKEN is refused beyond loopback


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
    # requests served at once (the request thread pool); the database pool holds as many connections
    request_threads: int = Field(default=40, ge=1, le=1000)
    # requests inside the API at once, served or waiting for a thread; one more is answered 503
    max_open_requests: int = Field(default=512, ge=1)
    cors_origins: list[str] = Field(default_factory=list)
    # host names the server answers to besides IP addresses, localhost and `host` ("*": any)
    allowed_hosts: list[str] = Field(default_factory=list)
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
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def check_serve_address(settings: Settings) -> None:
    """Refuse to serve on a non-loopback host without a token (unless explicitly allowed) or with a
    token shorter than :data:`MIN_TOKEN_CHARS`.

    Raises ``ValueError`` naming ``host`` or ``api_token`` with what to do instead.
    """
    if is_loopback(settings.host):
        return
    if settings.token is not None and len(settings.token) < MIN_TOKEN_CHARS:
        raise ValueError(f"api_token: too weak to serve {settings.host!r}; use at least {MIN_TOKEN_CHARS} "
                         "random characters")
    if settings.token or settings.allow_remote_without_token:
        return
    raise ValueError(f"host: refusing to listen on {settings.host!r} without HEADQ_API_TOKEN; set a token "
                     "or HEADQ_ALLOW_REMOTE_WITHOUT_TOKEN=1")
