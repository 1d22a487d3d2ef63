"""Admission: how much work the API takes at once.

When the app starts, the request thread pool gets ``request_threads`` threads (the database pool
holds as many connections, so a thread never waits for one). A request arriving while
``max_open_requests`` are open (served or waiting for a thread) is answered 503 with
``Retry-After`` at once instead of queueing without bound. The exempt paths (``/health``) always
pass: they are answered on the event loop, whatever the threads are doing.
"""

from __future__ import annotations

from collections.abc import Collection

import anyio.to_thread
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from headq_jobs.settings import Settings

RETRY_AFTER_S = 1


class Admission:
    """ASGI middleware: sizes the thread pool at startup, refuses requests beyond the open limit."""

    def __init__(self, app: ASGIApp, settings: Settings, exempt: Collection[str] = ()) -> None:
        self.app, self.exempt = app, frozenset(exempt)
        self.threads, self.limit = settings.request_threads, settings.max_open_requests
        self.open = 0  # only the event loop's thread touches it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.open >= self.limit:
            busy = JSONResponse({"detail": f"server busy: {self.open} requests open (max_open_requests); "
                                           f"retry after {RETRY_AFTER_S} s"},
                                status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
            await busy(scope, receive, send)
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1
