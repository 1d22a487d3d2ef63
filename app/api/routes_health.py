"""Liveness (``/health``: the process answers) and readiness (``/ready``: database and executor)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import ExecutorDep
from app.api.problems import problems
from headq_jobs.store import ping
from headq_spec.api import Status

router = APIRouter(tags=["health"], responses=problems(413))


@router.get("/health", response_model=Status)
async def health() -> Status:
    """The API process is alive (answered on the event loop: busy request threads do not delay it)."""
    return Status(status="ok")


@router.get("/ready", response_model=Status, responses={503: {"model": Status}})
def ready(request: Request, executor: ExecutorDep) -> Status | JSONResponse:
    """Ready when the database answers and the executor (if any) says it can take jobs; else 503."""
    try:
        ping(request.app.state.engine)
    except Exception as exc:
        return _unavailable(f"database: {type(exc).__name__}: {exc}")
    if executor is not None:
        ok, reason = executor.ready()
        if not ok:
            return _unavailable(f"executor: {reason}")
    return Status(status="ok")


def _unavailable(detail: str) -> JSONResponse:
    return JSONResponse(Status(status="unavailable", detail=detail).model_dump(), status_code=503)
