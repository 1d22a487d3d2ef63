"""Serve the dashboard inside the FastAPI process under ``/dashboard``.

The Dash app is a WSGI (Flask) app; a2wsgi runs its requests in a thread pool separate from the
event loop and from FastAPI's own thread pool, so a Dash callback that calls the API over HTTP on
the same single-worker uvicorn server cannot deadlock it (tests/dashboard/test_mount.py checks).
"""

from __future__ import annotations

from a2wsgi import WSGIMiddleware

from app.dashboard import create_dash

MOUNT_PATH = "/dashboard"


def mount_dashboard(fastapi_app, api_base_url: str, api_token: str | None = None, workers: int = 8):
    """Mount the dashboard on ``fastapi_app`` at ``/dashboard``; returns the Dash app.

    ``api_base_url`` is where the dashboard reaches the API over HTTP (the server's own address
    when mounted in the API process). ``workers``: threads serving dashboard requests.
    """
    dash_app = create_dash(api_base_url, requests_pathname_prefix=MOUNT_PATH + "/", api_token=api_token)
    fastapi_app.mount(MOUNT_PATH, WSGIMiddleware(dash_app.server, workers=workers), name="dashboard")
    return dash_app
