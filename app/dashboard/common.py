"""Pieces every page shares: the API client of the running app, job pickers, banners, loading.

Pages call the API only through :func:`client`, which builds an :class:`ApiClient` for the base
URL stored on the Dash app by ``create_dash``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import dash
import flask
from dash import dcc, html

from app.dashboard.api import ApiClient, ApiError

CONFIG_KEY = "HEADQ_API_BASE_URL"
TOKEN_KEY = "HEADQ_API_TOKEN"
NO_RESULTS = (
    "No finished evaluation yet. Submit one on the Jobs page, or import a results document "
    "with POST /api/v1/results/import."
)


def client() -> ApiClient:
    """Client of the API this dashboard was created for (call inside a layout or callback)."""
    config = flask.current_app.config  # the Flask server of the Dash app serving this request
    return ApiClient(config[CONFIG_KEY], token=config.get(TOKEN_KEY))


def error_banner(message: str) -> html.Div:
    """A visible, readable error (``role=alert``)."""
    return html.Div(
        message,
        role="alert",
        className="headq-error",
        style={
            "background": "#fde2e1",
            "color": "#8a1c14",
            "padding": "8px 12px",
            "border-radius": "4px",
            "margin": "8px 0",
        },
    )


def empty_state(message: str) -> html.Div:
    """The visible message shown where there is nothing to draw yet."""
    return html.Div(
        message,
        className="headq-empty",
        style={
            "color": "#555",
            "padding": "24px",
            "border": "1px dashed #bbb",
            "border-radius": "4px",
            "margin": "8px 0",
        },
    )


def evaluation_jobs() -> tuple[list[dict], str | None]:
    """Dropdown options of succeeded evaluation jobs, and an error message (or None)."""
    try:
        jobs = client().jobs(status="succeeded", kind="evaluation")
    except ApiError as exc:
        return [], str(exc)
    return [
        {"label": f"{j.get('label') or j.get('model_id') or 'job'} · {j['id'][:8]}", "value": j["id"]}
        for j in jobs
    ], None


def load_results(job_id: str | None) -> tuple[dict | None, str | None]:
    """``(results document, None)`` or ``(None, readable error)``; ``(None, None)`` without a job."""
    if not job_id:
        return None, None
    try:
        return client().results(job_id), None
    except ApiError as exc:
        return None, f"Results of job {job_id}: {exc}"


def linked_job(job: str | None, options: list[dict]) -> tuple[str | None, str | None]:
    """The linked job when it is a finished evaluation, else the newest one and a readable note."""
    chosen = pick(job, options)
    if job and chosen != job:
        return chosen, f"job: {job} is not a succeeded evaluation job; showing the newest one instead."
    return chosen, None


def linked_run(
    run: str | None, runs: list[str], fallback: str | None, field: str = "run"
) -> tuple[str | None, str | None]:
    """The linked configuration when the job has it, else ``fallback`` and a note naming ``field``."""
    if run is None or run in runs:
        return (run if run is not None else fallback), None
    return fallback, f"{field}: {run!r} is not a configuration of this job; showing {fallback} instead."


def pick(value: Any, options: list[dict]) -> Any:
    """``value`` when it is one of ``options``, else the first option's value (or None)."""
    values = [o["value"] for o in options]
    if value in values:
        return value
    return values[0] if values else None


def as_index(value: Any, field: str) -> int | None:
    """A non-negative int from a query-string value; None when absent; ValueError naming the field."""
    if value in (None, ""):
        return None
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: must be a whole number, got {value!r}") from None
    if out < 0:
        raise ValueError(f"{field}: must be >= 0, got {out}")
    return out


def page_link(path: str, **query: Any) -> str:
    """Deep link to a dashboard page, e.g. ``page_link('/run', job=.., run=.., layer=1, head=2)``."""
    params = {k: v for k, v in query.items() if v is not None}
    return dash.get_relative_path(path) + (f"?{urlencode(params)}" if params else "")


def picker(id_: str, options: list, value: Any, label: str, **kwargs: Any) -> html.Div:
    """A labelled dropdown."""
    return html.Div(
        [
            html.Label(label, htmlFor=id_, style={"font-size": "12px", "color": "#444"}),
            dcc.Dropdown(id=id_, options=options, value=value, clearable=False, **kwargs),
        ],
        style={"min-width": "220px", "flex": "1"},
    )


ROW = {"display": "flex", "gap": "12px", "flex-wrap": "wrap", "align-items": "flex-end"}
GRID = {"display": "grid", "grid-template-columns": "repeat(auto-fit, minmax(360px, 1fr))", "gap": "8px"}
