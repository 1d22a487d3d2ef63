"""Jobs page: every job with live status and progress, and the form that submits an evaluation."""

from __future__ import annotations

import dash
from dash import Input, Output, State, callback, dcc, html

from app.dashboard.api import ApiError
from app.dashboard.common import ROW, client, empty_state, error_banner, page_link
from app.dashboard.job_form import build_spec

dash.register_page(__name__, path="/", name="Jobs", title="HeadQ Lab · Jobs")

REFRESH_MS = 2000
FORM_FIELDS = [
    "label",
    "model",
    "calibration_job",
    "bits",
    "group_size",
    "residual",
    "axis",
    "headq",
    "rank",
    "basis",
    "sign",
    "value_bits",
    "value_policy",
    "keep_fraction",
    "baselines",
]


def _field(name: str, control) -> html.Div:
    return html.Div(
        [
            html.Label(
                name.replace("_", " "),
                htmlFor=f"form-{name}",
                style={"font-size": "12px", "display": "block"},
            ),
            control,
        ],
        style={"min-width": "140px"},
    )


def _dropdown(name: str, options: list, value) -> html.Div:
    return _field(name, dcc.Dropdown(id=f"form-{name}", options=options, value=value, clearable=False))


def _form() -> html.Div:
    bits = [{"label": str(b), "value": b} for b in (1, 2, 3, 4, 8)]
    return html.Div(
        [
            html.H3("Submit an evaluation"),
            html.Div(
                [
                    _field("label", dcc.Input(id="form-label", type="text", placeholder="optional")),
                    _field("model", dcc.Input(id="form-model", type="text", value="builtin:smollm2-135m")),
                    _field(
                        "calibration_job",
                        dcc.Dropdown(id="form-calibration_job", options=[], placeholder="none"),
                    ),
                    _field(
                        "api_token",
                        dcc.Input(
                            id="form-api_token", type="password", placeholder="if the server needs one"
                        ),
                    ),
                ],
                style=ROW,
            ),
            html.Div(
                [
                    _dropdown("bits", bits, 2),
                    _field("group_size", dcc.Input(id="form-group_size", type="number", value=32, min=1)),
                    _field("residual", dcc.Input(id="form-residual", type="number", value=0, min=0)),
                    _dropdown("axis", ["per_channel", "per_token"], "per_channel"),
                ],
                style=ROW,
            ),
            html.Div(
                [
                    dcc.Checklist(id="form-headq", options=[{"label": "HeadQ", "value": "on"}], value=["on"]),
                    _field("rank", dcc.Input(id="form-rank", type="number", value=8, min=1)),
                    _dropdown("basis", ["query_pca", "key_pca", "random"], "query_pca"),
                    _dropdown(
                        "sign", [{"label": "+1", "value": 1}, {"label": "-1 (wrong sign)", "value": -1}], 1
                    ),
                ],
                style=ROW,
            ),
            html.Div(
                [
                    _dropdown("value_bits", ["dense"] + [2, 4, 8], "dense"),
                    _dropdown("value_policy", ["none", "online", "oracle"], "none"),
                    _field(
                        "keep_fraction",
                        dcc.Input(id="form-keep_fraction", type="number", value=0.1, step=0.05),
                    ),
                    dcc.Checklist(
                        id="form-baselines",
                        value=["on"],
                        options=[{"label": "add dense and no-HeadQ baselines", "value": "on"}],
                    ),
                ],
                style=ROW,
            ),
            html.Button("Submit", id="form-submit", n_clicks=0, style={"margin-top": "10px"}),
            html.Div(id="form-result"),
        ],
        style={"border-top": "1px solid #ddd", "margin-top": "16px"},
    )


def layout(**_query) -> html.Div:
    return html.Div(
        [
            html.H2("Jobs"),
            dcc.Interval(id="jobs-interval", interval=REFRESH_MS),
            html.Div(id="jobs-table", children=_jobs_table()),
            _form(),
        ]
    )


def _job_row(job: dict) -> html.Tr:
    progress = float(job.get("progress") or 0.0)
    link = job["id"][:8]
    if job.get("status") == "succeeded" and job.get("kind") == "evaluation":
        link = dcc.Link(job["id"][:8], href=page_link("/run", job=job["id"]))
    cells = [
        link,
        job.get("kind"),
        job.get("label") or "",
        job.get("model_id") or "",
        html.Span(job.get("status"), className=f"status-{job.get('status')}"),
        html.Span([html.Progress(value=str(progress), max="1"), f" {progress:.0%}"]),
        job.get("stage") or "",
        job.get("error") or "",
        (job.get("created_at") or "")[:19],
    ]
    return html.Tr([html.Td(c) for c in cells], className="job-row")


def _jobs_table() -> html.Div | html.Table:
    try:
        jobs = client().jobs()
    except ApiError as exc:
        return error_banner(str(exc))
    if not jobs:
        return empty_state(
            "No jobs yet. Submit an evaluation below, or import results with POST /api/v1/results/import."
        )
    head = html.Tr(
        [
            html.Th(h)
            for h in ("id", "kind", "label", "model", "status", "progress", "stage", "error", "created")
        ]
    )
    return html.Table(
        [html.Thead(head), html.Tbody([_job_row(j) for j in jobs])],
        id="jobs-list",
        style={"border-collapse": "collapse", "width": "100%"},
    )


@callback(Output("jobs-table", "children"), Input("jobs-interval", "n_intervals"), prevent_initial_call=True)
def refresh_jobs(_n):
    return _jobs_table()


@callback(Output("form-calibration_job", "options"), Input("form-calibration_job", "id"))
def load_calibrations(_id):
    try:
        items = client().calibrations()
    except ApiError:
        return []
    return [
        {"label": f"{j.get('label') or j.get('model_id') or 'calibration'} · {j['id'][:8]}", "value": j["id"]}
        for j in items
    ]


@callback(
    Output("form-result", "children"),
    Input("form-submit", "n_clicks"),
    State("form-api_token", "value"),
    [State(f"form-{name}", "value") for name in FORM_FIELDS],
    prevent_initial_call=True,
)
def submit(_clicks, token, *values):
    """POST the spec with the token the user typed (the dashboard lends none of its own)."""
    form = dict(zip(FORM_FIELDS, values, strict=True))
    form["headq"], form["baselines"] = bool(form["headq"]), bool(form["baselines"])
    try:
        job = client().submit(build_spec(form), user_token=token)
    except (ApiError, ValueError) as exc:
        return error_banner(f"Not submitted: {exc}")
    return html.Div(
        f"Created job {job['id']} ({job.get('status')}).",
        id="form-created",
        style={"color": "#14532d", "margin": "8px 0"},
    )
