"""``create_app(settings=None, executor=None) -> FastAPI``: the HeadQ Lab server.

Nothing is built at import time. ``create_app`` reads the settings (or takes the given ones), opens
the database and migrates it to the newest schema (``alembic upgrade head``), picks the executor
named by ``settings.executor`` (``headq_jobs.executors.build_executor``) unless one is given, mounts the
REST API under ``/api/v1`` (OpenAPI at ``/docs``) and the dashboard under ``/dashboard``. The
executor is started and stopped with the app's lifespan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api import routes_health, routes_jobs, routes_results
from app.api.admission import Admission
from app.api.errors import BodySizeLimit, install_error_handlers
from app.api.security import BrowserGuard, host_names
from headq_jobs.settings import Settings, get_settings
from headq_jobs.store import make_engine, make_session_factory, migrate

API_PREFIX = "/api/v1"


def _default_executor(settings: Settings) -> Any:
    """The executor ``settings.executor`` names, or None for ``none`` (the API only queues)."""
    if settings.executor == "none":
        return None
    from headq_jobs.executors import build_executor

    return build_executor(settings)


def create_app(settings: Settings | None = None, executor: Any = None) -> FastAPI:
    """Build the FastAPI app (database migrated, routers, error handlers, limits, CORS, dashboard)."""
    settings = settings or get_settings()
    engine = make_engine(settings.database_url, pool_size=settings.request_threads)
    migrate(engine)
    executor = executor if executor is not None else _default_executor(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if executor is not None:
            executor.start()
        try:
            yield
        finally:
            if executor is not None:
                executor.stop()
            engine.dispose()

    app = FastAPI(title="HeadQ Lab", version="0.1.0", lifespan=lifespan,
                  description="Per-head KV-cache quantization distortion, measured and corrected (HeadQ).")
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.executor = executor
    install_error_handlers(app)
    for module in (routes_jobs, routes_results, routes_health):
        app.include_router(module.router, prefix=API_PREFIX)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key"])
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(BrowserGuard, names=host_names(settings), tokenless=settings.token is None)
    app.add_middleware(Admission, settings=settings, exempt=[f"{API_PREFIX}/health"])
    if settings.dashboard:
        from app.dashboard.mount import mount_dashboard

        mount_dashboard(app, settings.api_base_url, settings.token)
    return app
