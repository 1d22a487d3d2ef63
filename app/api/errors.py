"""Errors as the API answers them: ``{"detail": "..."}`` with the right status, never a 500 on bad
input. Validation errors name each field by its dotted path (``model.id``, ``runs.0.key.bits``);
store exceptions map to 404 / 409 (an ambiguous short id too); oversized bodies are refused with 413
before they are read whole.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from headq_jobs.store import IdempotencyConflict, JobNotFound, JobStateError
from headq_jobs.store.jobs import AmbiguousJobId
from headq_spec.errors import field_errors, one_line

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a route raises on purpose: status code and the message shown to the client."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status_code, self.detail, self.headers = status_code, detail, headers


def validation_response(errors: list[dict[str, str]]) -> JSONResponse:
    """422 with a one-line ``detail`` naming every field, and the list in ``errors``."""
    return JSONResponse({"detail": one_line(errors), "errors": errors}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into ``{"detail": ...}`` with a 4xx/5xx code."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(field_errors(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(JobNotFound)
    async def _missing(_: Request, exc: JobNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc.args[0])}, status_code=404)

    @app.exception_handler(JobStateError)
    @app.exception_handler(IdempotencyConflict)
    @app.exception_handler(AmbiguousJobId)
    async def _conflict(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(ValueError)
    async def _value(_: Request, exc: ValueError) -> JSONResponse:
        return validation_response(field_errors([{"loc": (), "msg": str(exc)}]))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path (Starlette lists only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


class BodySizeLimit:
    """ASGI middleware: answer 413 to any request whose body exceeds ``max_bytes`` (declared in
    ``Content-Length`` or counted while streaming) without passing it on."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send, 413 if declared.isdigit() else 400)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(send, 413)
                return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, status: int) -> None:
        detail = (f"request body larger than {self.max_bytes} bytes (max_request_bytes)" if status == 413
                  else "invalid Content-Length header")
        response = JSONResponse({"detail": detail}, status_code=status)
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}

