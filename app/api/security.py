"""Browser-facing guards of the whole app (REST API and dashboard), one ASGI middleware.

* ``Host`` must be a name of this server: an IP address, ``localhost``, the bind host or a name in
  ``allowed_hosts`` (``HEADQ_ALLOWED_HOSTS``, ``"*"`` for any). A page on ``attacker.example``
  whose name was made to resolve to 127.0.0.1 (DNS rebinding) sends ``Host: attacker.example``.
* On a server without a token, a write (POST, PUT, PATCH, DELETE) must say
  ``Content-Type: application/json``: no HTML form can send that header, and a cross-site script
  must first pass a CORS preflight, refused unless its origin is in ``cors_origins``.

Both answer 400 with ``{"detail": ...}`` before the request reaches a route.
"""

from __future__ import annotations

import ipaddress

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from headq_jobs.settings import LOOPBACK_NAMES, Settings

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def host_names(settings: Settings) -> frozenset[str]:
    """The host names (besides IP addresses) this server answers to."""
    return frozenset(name.lower() for name in (*LOOPBACK_NAMES, settings.host, *settings.allowed_hosts))


def host_of(header: str) -> str:
    """The host name of a ``Host`` header, without port, brackets or a trailing dot, in lower case."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_write(scope: Scope) -> bool:
    """A POST, PUT, PATCH or DELETE that a route serves (any other gets the router's 404 / 405)."""
    return scope["method"] in WRITE_METHODS and any(
        route.matches(scope)[0] == Match.FULL for route in scope["app"].router.routes)


def is_json(content_type: str | None) -> bool:
    """True for ``application/json`` and ``application/*+json`` (parameters allowed)."""
    media = (content_type or "").partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BrowserGuard:
    """The middleware; ``names`` from :func:`host_names`, ``tokenless`` when no token is set."""

    def __init__(self, app: ASGIApp, names: frozenset[str], tokenless: bool) -> None:
        self.app, self.names, self.tokenless = app, names, tokenless

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = host_of(headers.get("host", ""))
        if not (_is_address(host) or host in self.names or "*" in self.names):
            detail = f"Host {host!r} is not a name of this server (HEADQ_ALLOWED_HOSTS)"
        elif self.tokenless and _is_write(scope) and not is_json(headers.get("content-type")):
            detail = ("a write to a server without HEADQ_API_TOKEN needs the header "
                      "'Content-Type: application/json' (which no cross-site form can send)")
        else:
            await self.app(scope, receive, send)
            return
        await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)

