"""Request dependencies (``Annotated[..., Depends()]``): settings, a database session, the executor,
and the bearer-token check of write endpoints. Everything hangs off ``app.state``, set by
``create_app``; nothing is global. Those without I/O are ``async``: they run on the event loop
instead of waiting for a thread of the request pool."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from app.api.errors import ApiError
from headq_jobs.settings import Settings


async def get_settings(request: Request) -> Settings:
    """The settings this app was created with."""
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """A database session for one endpoint call. The store functions commit, which hands the
    connection back to the pool at once; the session is closed when the endpoint returns (``scope=
    "function"``), before the response is serialized and sent, so no request holds a connection
    while it waits for a thread."""
    with request.app.state.session_factory() as session:
        yield session


async def get_executor(request: Request) -> Any:
    """The executor (``submit``, ``cancel``, ``ready``), or None when the API only queues."""
    return request.app.state.executor


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ExecutorDep = Annotated[Any, Depends(get_executor)]


async def require_token(settings: SettingsDep,
                        authorization: Annotated[str | None, Header(include_in_schema=False)] = None) -> None:
    """401 unless ``Authorization: Bearer <HEADQ_API_TOKEN>`` matches (no check when no token is set)."""
    expected = settings.token
    if expected is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), expected.encode()):
        raise ApiError(401, "missing or wrong bearer token: send 'Authorization: Bearer <HEADQ_API_TOKEN>'",
                       headers={"WWW-Authenticate": "Bearer"})


WriteAccess = Depends(require_token)
