"""Jobs page: every job with live status, progress, elapsed and estimated remaining time (UTC
timestamps), a cancel button for queued and running jobs, and the form that submits an evaluation."""

from __future__ import annotations

from datetime import UTC, datetime

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html

from app.dashboard.api import ApiError
from app.dashboard.common import ROW, client, empty_state, error_banner, page_link
from app.dashboard.job_form import build_spec
from headq_spec.runs import FORMAT_BITS

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
    "format",
    "rotation",
    "pre_rope",
    "nuq",
    "headq",
    "rank",
    "basis",
    "sign",
    "value_bits",
    "value_policy",
    "keep_fraction",
    "baselines",
    "dataset_source",
    "dataset_name",
    "split",
    "tokens",
    "window",
    "head_windows",
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
                    _dropdown("format", ["int", *FORMAT_BITS], "int"),
                    dcc.Checklist(
                        id="form-rotation", value=[],
                        options=[{"label": "Hadamard rotation", "value": "on"}],
                    ),
                    dcc.Checklist(
                        id="form-pre_rope", value=[],
                        options=[{"label": "Pre-RoPE keys (KVQuant; full-width RoPE models)", "value": "on"}],
                    ),
                    dcc.Checklist(
                        id="form-nuq", value=[],
                        options=[{"label": "Non-uniform codebooks (KVQuant nuq; int 2-4 bits, "
                                           "needs a calibration)", "value": "on"}],
                    ),
                ],
                style=ROW,
            ),
            html.Div(
                [
                    dcc.Checklist(
                        id="form-headq", value=[],
                        options=[{"label": "HeadQ (needs a calibration)", "value": "on"}],
                    ),
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
            html.Div(
                [
                    _dropdown("dataset_source", ["builtin", "hf"], "builtin"),
                    _field("dataset_name", dcc.Input(id="form-dataset_name", type="text", value="sotu")),
                    _field("split", dcc.Input(id="form-split", type="text", placeholder="default")),
                    _field("tokens", dcc.Input(id="form-tokens", type="number", value=32768, min=2)),
                    _field("window", dcc.Input(id="form-window", type="number", value=1024, min=2)),
                    _field("head_windows", dcc.Input(id="form-head_windows", type="number", min=1,
                                                     placeholder="all windows")),
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
            html.Div(id="jobs-cancelled"),
            _form(),
        ]
    )


def _time(value: str | None) -> datetime | None:
    return None if not value else datetime.fromisoformat(value).astimezone(UTC)


def timestamp(value: str | None) -> str:
    """An API timestamp as ``2026-05-01 12:34:56 UTC`` (empty for none)."""
    moment = _time(value)
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min`` (empty for none)."""
    if seconds is None:
        return ""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s} s"
    return f"{s // 60} min {s % 60:02d} s" if s < 3600 else f"{s // 3600} h {s % 3600 // 60:02d} min"


def times(job: dict, now: datetime) -> tuple[float | None, float | None]:
    """Seconds since the job started (to its end when finished) and, while it runs with some
    progress, the seconds left at the same pace: ``elapsed * (1 - progress) / progress``."""
    started = _time(job.get("started_at"))
    if started is None:
        return None, None
    elapsed = ((_time(job.get("finished_at")) or now) - started).total_seconds()
    progress = float(job.get("progress") or 0.0)
    if job.get("status") != "running" or not 0 < progress < 1:
        return elapsed, None
    return elapsed, elapsed * (1 - progress) / progress


def job_label(job: dict) -> str:
    """The job's label, else ``kind · model · date`` (API-submitted jobs often have none)."""
    date = timestamp(job.get("created_at"))[:10]
    return job.get("label") or " · ".join(x for x in (job.get("kind"), job.get("model_id"), date) if x)


RESULT_PAGES = {"evaluation": "/run", "calibration": "/calibration", "retrieval": "/retrieval"}


def _link(job: dict):
    page = RESULT_PAGES.get(job.get("kind", ""))
    if job.get("status") != "succeeded" or page is None:
        return job["id"][:8]
    return dcc.Link(job["id"][:8], href=page_link(page, job=job["id"]))


def _cancel(job: dict):
    if job.get("status") not in ("queued", "running"):
        return ""
    asked = bool(job.get("cancel_requested"))
    return html.Button("cancelling…" if asked else "cancel", id={"type": "job-cancel", "id": job["id"]},
                       n_clicks=0, disabled=asked, className="job-cancel")


def _job_row(job: dict, now: datetime) -> html.Tr:
    progress = float(job.get("progress") or 0.0)
    elapsed, left = times(job, now)
    cells = [
        _link(job),
        job.get("kind"),
        job_label(job),
        job.get("model_id") or "",
        html.Span(job.get("status"), className=f"status-{job.get('status')}"),
        html.Span([html.Progress(value=str(progress), max="1"), f" {progress:.0%}"]),
        job.get("stage") or "",
        duration(elapsed),
        duration(left) and f"~{duration(left)}",
        job.get("error") or "",
        timestamp(job.get("created_at")),
        _cancel(job),
    ]
    return html.Tr([html.Td(c) for c in cells], className="job-row")


HEADINGS = ("id", "kind", "label", "model", "status", "progress", "stage", "elapsed", "time left", "error",
            "created", "")


def _jobs_table() -> html.Div | html.Table:
    try:
        jobs = client().jobs()
    except ApiError as exc:
        return error_banner(str(exc))
    if not jobs:
        return empty_state(
            "No jobs yet. Submit an evaluation below, or import results with POST /api/v1/results/import."
        )
    now = datetime.now(UTC)
    return html.Table(
        [html.Thead(html.Tr([html.Th(h) for h in HEADINGS])), html.Tbody([_job_row(j, now) for j in jobs])],
        id="jobs-list",
        style={"border-collapse": "collapse", "width": "100%"},
    )


@callback(Output("jobs-table", "children"), Input("jobs-interval", "n_intervals"), prevent_initial_call=True)
def refresh_jobs(_n):
    return _jobs_table()


@callback(
    Output("jobs-cancelled", "children"),
    Input({"type": "job-cancel", "id": ALL}, "n_clicks"),
    State("form-api_token", "value"),
    prevent_initial_call=True,
)
def cancel(clicks, token):
    """Cancel the clicked job through the API, with the token the user typed."""
    if not isinstance(ctx.triggered_id, dict) or not any(clicks):
        return dash.no_update
    job_id = ctx.triggered_id["id"]
    try:
        job = client().cancel(job_id, user_token=token)
    except ApiError as exc:
        return error_banner(f"Not cancelled: {exc}")
    state = "cancelled" if job.get("status") == "cancelled" else "asked to stop"
    return html.Div(f"Job {job_id[:8]} {state}.", id="job-cancel-result", style={"margin": "8px 0"})


@callback(Output("form-headq", "value"), Input("form-calibration_job", "value"), prevent_initial_call=True)
def headq_with_calibration(calibration):
    """HeadQ runs need a calibration: on when one is chosen, off when none is."""
    return ["on"] if calibration else []


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
    form["rotation"], form["pre_rope"] = bool(form["rotation"]), bool(form["pre_rope"])
    form["nuq"] = bool(form["nuq"])
    try:
        job = client().submit(build_spec(form), user_token=token)
    except (ApiError, ValueError) as exc:
        return error_banner(f"Not submitted: {exc}")
    return html.Div(
        f"Created job {job['id']} ({job.get('status')}).",
        id="form-created",
        style={"color": "#14532d", "margin": "8px 0"},
    )
