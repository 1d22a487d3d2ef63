"""Calibration page: the query eigenvalue spectrum of one layer and KV head group, from a calibration
job's results document (``arrays.query_spectrum``), with the calibration's rank marked."""

from __future__ import annotations

import dash
from dash import Input, Output, callback, dcc, html

from app.dashboard import figures
from app.dashboard import results as R
from app.dashboard.api import ApiError
from app.dashboard.common import ROW, as_index, client, empty_state, error_banner, load_results, pick, picker

dash.register_page(__name__, path="/calibration", name="Calibration", title="HeadQ Lab · Calibration")

NO_CALIBRATION = "No finished calibration yet. Submit a calibration job through the API or the CLI."


def spectrum_shape(doc: dict) -> tuple[int, int]:
    """``(layers, KV heads)`` of a calibration's ``arrays.query_spectrum``."""
    table = (doc.get("arrays") or {}).get("query_spectrum") or []
    return len(table), len(table[0]) if table else 0


def layout(job=None, layer=None, kv_head=None, **_query) -> html.Div:
    try:
        jobs = client().calibrations()
    except ApiError as exc:
        return html.Div([html.H2("Calibration"), error_banner(str(exc))])
    if not jobs:
        return html.Div([html.H2("Calibration"), empty_state(NO_CALIBRATION)])
    options = [{"label": f"{j.get('label') or j.get('model_id')} · {j['id'][:8]}", "value": j["id"]}
               for j in jobs]
    try:
        chosen = [as_index(layer, "layer") or 0, as_index(kv_head, "kv_head") or 0]
        note = None
    except ValueError as exc:
        chosen, note = [0, 0], str(exc)
    job = pick(job, options)
    layer_options, kv_options = choose_job(job)  # in the layout: a deep link's picks are options at once
    return html.Div(
        [
            html.H2("Calibration"),
            html.P("Eigenvalues of the query second moment per layer and KV head group, largest first; "
                   "the dashed line is the calibration's rank (the directions HeadQ can correct)."),
            html.Div(
                [
                    picker("cal-job", options, job, "calibration job"),
                    picker("cal-layer", layer_options, chosen[0], "layer"),
                    picker("cal-kv_head", kv_options, chosen[1], "KV head"),
                ],
                style=ROW,
            ),
            html.Div(error_banner(note) if note else None, id="cal-message"),
            dcc.Graph(id="cal-spectrum"),
        ]
    )


@callback(
    Output("cal-layer", "options"),
    Output("cal-kv_head", "options"),
    Input("cal-job", "value"),
    prevent_initial_call=True,
)
def choose_job(job):
    doc, _ = load_results(job)
    layers, kv_heads = spectrum_shape(doc) if doc else (0, 0)
    return list(range(layers)), list(range(kv_heads))


@callback(
    Output("cal-spectrum", "figure"),
    Input("cal-job", "value"),
    Input("cal-layer", "value"),
    Input("cal-kv_head", "value"),
)
def draw(job, layer, kv_head):
    doc, error = load_results(job)
    if doc is None:
        return figures.empty_figure(error or "Choose a calibration job.")
    eigenvalues = R.query_spectrum(doc, layer or 0, kv_head or 0)
    if not eigenvalues:
        return figures.empty_figure(f"No query spectrum for layer {layer}, KV head {kv_head} in this job.")
    title = f"query spectrum · layer {layer} · KV head {kv_head}"
    return figures.spectrum_figure(eigenvalues, doc.get("rank"), title)
