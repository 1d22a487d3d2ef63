"""The HeadQ Lab dashboard: a multi-page Dash app that reads data only through the REST API.

``create_dash(api_base_url, requests_pathname_prefix)`` builds the app; pages live one per file in
``app/dashboard/pages`` (``dash.register_page``) with their callbacks beside their layout;
figures are pure functions in :mod:`app.dashboard.figures`. ``mount.mount_dashboard`` serves it
inside the FastAPI process under ``/dashboard``.
"""

from __future__ import annotations

import dash
from dash import Dash, dcc, html

from app.dashboard.api import ApiClient
from app.dashboard.common import CONFIG_KEY, TOKEN_KEY

NAV = [
    ("Jobs", "/"),
    ("Run", "/run"),
    ("Predictor check", "/predictor"),
    ("Perplexity", "/perplexity"),
    ("Compare", "/compare"),
    ("Retrieval", "/retrieval"),
]


def create_dash(
    api_base_url: str, requests_pathname_prefix: str = "/dashboard/", api_token: str | None = None
) -> Dash:
    """Build the dashboard for the API at ``api_base_url`` (e.g. ``http://127.0.0.1:8000``).

    ``requests_pathname_prefix`` is the URL path the browser sees (``/dashboard/`` when mounted
    in the API, ``/`` standalone); routes are served from ``/`` of the app's own Flask server.
    ``api_token`` is sent with the dashboard's reads only; a submitted job carries the token the
    user types in the form, so the server's token is never lent to whoever opens the page.
    Several apps may live in one process: each binds its page callbacks at creation.
    """
    ApiClient(api_base_url)  # validates the URL early (ValueError naming api_base_url)
    if not requests_pathname_prefix.startswith("/") or not requests_pathname_prefix.endswith("/"):
        raise ValueError(
            f"requests_pathname_prefix: must start and end with '/', got {requests_pathname_prefix!r}"
        )
    app = Dash(
        __name__,
        use_pages=True,
        pages_folder="pages",
        title="HeadQ Lab",
        requests_pathname_prefix=requests_pathname_prefix,
        routes_pathname_prefix="/",
        suppress_callback_exceptions=True,
        update_title="",
    )
    app.server.config[CONFIG_KEY] = api_base_url.rstrip("/")
    app.server.config[TOKEN_KEY] = api_token
    links = [
        dcc.Link(
            name,
            href=dash.get_relative_path(path),
            style={"margin-right": "16px"},
            id=f"nav-{path.strip('/') or 'jobs'}",
        )
        for name, path in NAV
    ]
    app.layout = html.Div(
        [
            html.Header(
                [html.Strong("HeadQ Lab", style={"margin-right": "24px"}), *links],
                style={
                    "padding": "10px 16px",
                    "border-bottom": "1px solid #ddd",
                    "font-family": "sans-serif",
                },
            ),
            html.Main(dash.page_container, style={"padding": "8px 16px", "font-family": "sans-serif"}),
        ]
    )
    # Dash binds callbacks registered with ``dash.callback`` (the pages') to the first app that
    # is set up; doing it now keeps every app created in this process complete and separate.
    with app.server.app_context():
        app._setup_server()
    return app
