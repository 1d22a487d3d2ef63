"""Run page: layer × head heatmaps of one configuration side by side, and a head's detail.

Deep link: ``/run?job=<id>&run=<name>&layer=<i>&head=<j>``. Clicking a cell in any panel selects
that head in every panel (an outline patched onto each drawn figure), fills the detail panel and
rewrites the address bar to that head's deep link (``history.replaceState``: no page reload).
Above the heatmaps: the run's perplexity, excess, share removed and effective bits, and what the
per-head metrics cover (with the query rows they were sampled from at long context); below the
heatmaps, the run's excess NLL against token position.
"""

from __future__ import annotations

import dash
from dash import ALL, Input, Output, Patch, State, callback, clientside_callback, ctx, dcc, html

from app.dashboard import charts, figures
from app.dashboard import results as R
from app.dashboard import run_views as V
from app.dashboard.common import (
    GRID,
    NO_RESULTS,
    ROW,
    as_index,
    empty_state,
    error_banner,
    evaluation_jobs,
    linked_job,
    linked_run,
    load_results,
    page_link,
    pick,
    picker,
)

dash.register_page(__name__, path="/run", name="Run", title="HeadQ Lab · Run")

PANELS = list(R.MAIN_METRICS) + ["extra"]


def _graph(panel: str) -> dcc.Graph:
    return dcc.Graph(
        id={"type": "run-heat", "panel": panel}, config={"displaylogo": False}, className="run-heatmap"
    )


def layout(job=None, run=None, layer=None, head=None, **_query) -> html.Div:
    options, error = evaluation_jobs()
    if error:
        return html.Div([html.H2("Run"), error_banner(error)])
    if not options:
        return html.Div([html.H2("Run"), empty_state(NO_RESULTS)])
    try:
        selected = {"layer": as_index(layer, "layer"), "head": as_index(head, "head")}
    except ValueError as exc:
        return html.Div([html.H2("Run"), error_banner(f"Bad link: {exc}")])
    job, note = linked_job(job, options)
    doc, error = load_results(job)
    runs = R.run_names(doc) if doc else []
    extra = [m for m in R.metric_names(doc) if m not in R.MAIN_METRICS] if doc else []
    run, run_note = linked_run(run, runs, R.default_run(doc)) if doc else (None, None)
    notes = [error_banner(n) for n in (note, run_note) if n]
    return html.Div(
        [
            html.H2("Run"),
            html.Div(
                [
                    picker("run-job", options, job, "job"),
                    picker("run-run", runs, run, "configuration"),
                    picker("run-extra", extra, extra[0] if extra else None, "other metric"),
                    dcc.Checklist(
                        id="run-log", options=[{"label": "log colour scale", "value": "log"}], value=[]
                    ),
                    dcc.Checklist(
                        id="run-shared",
                        options=[{"label": "one colour scale for all panels", "value": "shared"}],
                        value=[],
                    ),
                ],
                style=ROW,
            ),
            html.Div(notes or None, id="run-note"),
            html.Div(error_banner(error) if error else None, id="run-message"),
            html.Div(id="run-summary", style={"font-size": "15px", "margin": "8px 0"}),
            html.P(id="run-coverage", style={"color": "#444", "font-size": "13px"}),
            dcc.Store(id="run-selected", data=selected if None not in selected.values() else None),
            dcc.Store(id="run-drawn", data=False),
            dcc.Store(id="run-shape"),
            dcc.Store(id="run-href"),
            html.Div([_graph(p) for p in PANELS], style=GRID),
            dcc.Graph(id="run-positions"),
            html.Div(
                id="run-detail",
                children=empty_state("Click a head in any panel to see its detail."),
                style={"border-top": "1px solid #ddd", "margin-top": "12px"},
            ),
        ]
    )


@callback(
    Output("run-run", "options"),
    Output("run-run", "value"),
    Output("run-extra", "options"),
    Output("run-extra", "value"),
    Input("run-job", "value"),
    State("run-run", "value"),
    State("run-extra", "value"),
    prevent_initial_call=True,
)
def choose_job(job, run, extra):
    doc, _ = load_results(job)
    if doc is None:
        return [], None, [], None
    runs = R.run_names(doc)
    metrics = [m for m in R.metric_names(doc) if m not in R.MAIN_METRICS]
    return (
        runs,
        run if run in runs else R.default_run(doc),
        metrics,
        pick(extra, [{"value": m} for m in metrics]),
    )


def _selected_tuple(selected: dict | None) -> tuple[int, int] | None:
    return (selected["layer"], selected["head"]) if selected else None


@callback(
    Output("run-summary", "children"),
    Output("run-coverage", "children"),
    Input("run-job", "value"),
    Input("run-run", "value"),
)
def show_summary(job, run):
    """The run's headline numbers (with 95% intervals when stored) and the per-head coverage."""
    doc, _ = load_results(job)
    if doc is None or run is None:
        return None, None
    parts = V.run_summary(doc, run)
    coverage = " ".join(t for t in (V.coverage_line(doc), sampled_rows_line(doc)) if t) or None
    return html.Span(f"{run}: " + " · ".join(parts)) if parts else None, coverage


def sampled_rows_line(doc: dict) -> str | None:
    """What the per-head metrics read when an O(L) path (blockwise, fused) sampled query rows (None
    otherwise)."""
    attention = (doc.get("dataset") or {}).get("attention") or {}
    rows = attention.get("head_rows")
    if not rows:
        return None
    window = (doc.get("dataset") or {}).get("window")
    return (f"Per-head metrics from {len(rows)} sampled query rows of each window of {window} tokens "
            f"(positions {rows[0]} to {rows[-1]}, the last rows included), each exact over all its keys.")


@callback(Output("run-positions", "figure"), Input("run-job", "value"), Input("run-run", "value"))
def draw_positions(job, run):
    """The selected run's excess NLL against token position."""
    doc, error = load_results(job)
    if doc is None or run is None:
        return figures.empty_figure(error or "Choose a job and a configuration.")
    return charts.position_figure(doc.get("position_nll"), [run])


def _panel_metric(doc: dict, run: str, panel: str, extra: str | None) -> tuple[str | None, str | None]:
    """``(metric, None)`` for a drawable panel, else ``(None, message)``."""
    metric = extra if panel == "extra" else panel
    if metric is None or metric not in R.metric_names(doc):
        return None, f"{metric or 'no other metric'}: not in these results"
    note = R.dense_side_note(doc, run, metric)
    return (None, note) if note else (metric, None)


@callback(
    Output({"type": "run-heat", "panel": ALL}, "figure"),
    Output("run-message", "children"),
    Output("run-drawn", "data"),
    Output("run-shape", "data"),
    Input("run-job", "value"),
    Input("run-run", "value"),
    Input("run-extra", "value"),
    Input("run-log", "value"),
    Input("run-shared", "value"),
    State("run-selected", "data"),
)
def draw_heatmaps(job, run, extra, log, shared, selected):
    doc, error = load_results(job)
    if doc is None or run is None:
        message = error or "Choose a job and a configuration."
        empty = [figures.empty_figure(message)] * len(PANELS)
        return empty, error_banner(message) if error else None, True, None
    panels = [_panel_metric(doc, run, p, extra) for p in PANELS]
    matrices = {m: R.head_matrix(doc, run, m) for m, _ in panels if m}
    present = R.metric_names(doc)
    hover = {m: R.head_matrix(doc, run, m) for m in R.MAIN_METRICS if m in present}
    zrange = V.shared_range(list(matrices.values()), bool(log)) if shared else None
    sel, log = _selected_tuple(selected), bool(log)
    figs = [
        figures.heatmap_figure(matrices[m], m, log, sel, hover, zrange) if m else figures.empty_figure(n)
        for m, n in panels
    ]
    return figs, None, True, R.model_shape(doc)


@callback(
    Output("run-selected", "data"),
    Input({"type": "run-heat", "panel": ALL}, "clickData"),
    prevent_initial_call=True,
)
def select_head(_clicks):
    point = (ctx.triggered[0]["value"] or {}).get("points", [None])[0] if ctx.triggered else None
    if not point:
        return dash.no_update
    return {"layer": int(point["y"]), "head": int(point["x"])}


@callback(
    Output({"type": "run-heat", "panel": ALL}, "figure", allow_duplicate=True),
    Input("run-selected", "data"),
    State("run-drawn", "data"),
    State("run-shape", "data"),
    prevent_initial_call=True,
)
def mark_head(selected, drawn, shape):
    """Move the selection outline on every drawn panel (a patch: the heatmap data stays put)."""
    if not drawn:  # the page is being inserted; draw_heatmaps draws the outline itself
        return [dash.no_update] * len(PANELS)
    patch = Patch()
    patch["layout"]["shapes"] = figures.selection_shapes(_selected_tuple(selected), shape and tuple(shape))
    return [patch] * len(PANELS)


@callback(
    Output("run-href", "data"),
    Input("run-selected", "data"),
    Input("run-job", "value"),
    Input("run-run", "value"),
)
def head_link(selected, job, run):
    """Deep link of the shown job, run and head (what the address bar shows)."""
    head = selected or {}
    return page_link("/run", job=job, run=run, layer=head.get("layer"), head=head.get("head"))


clientside_callback(
    """href => { if (href && href !== location.pathname + location.search) {
                   history.replaceState(history.state, '', href); }
                 return window.dash_clientside.no_update; }""",
    Output("run-href", "id"),
    Input("run-href", "data"),
    prevent_initial_call=True,
)


@callback(
    Output("run-detail", "children"),
    Input("run-selected", "data"),
    Input("run-job", "value"),
    Input("run-run", "value"),
)
def show_detail(selected, job, run):
    if not selected or not run:
        return empty_state("Click a head in any panel to see its detail.")
    doc, error = load_results(job)
    if doc is None:
        return error_banner(error or "No results.")
    layer, head = selected["layer"], selected["head"]
    layers, heads = R.model_shape(doc)
    if layer >= layers or head >= heads:
        return error_banner(f"head: layer {layer}, head {head} is outside this model ({layers} × {heads})")
    kv = R.kv_head_of(doc, head)
    a2, kept = R.a2_weights(doc, run, layer, kv), R.a2_keep_rate(doc, run, layer, kv)
    spectrum = R.query_spectrum(doc, layer, kv)
    across = R.head_across_runs(doc, layer, head)
    title = f"layer {layer}, head {head} (KV head {kv})"
    return html.Div(
        [
            html.H3(title, id="run-detail-title"),
            dcc.Link(
                "link to this head",
                href=page_link("/run", job=job, run=run, layer=layer, head=head),
                id="run-detail-link",
            ),
            html.Div(
                [
                    dcc.Graph(
                        id="run-detail-a2",
                        figure=figures.a2_figure(a2, f"A² weights, {run}", V.kept_fraction(doc, run), kept)
                        if a2
                        else figures.empty_figure("no A² weights stored for this run"),
                    ),
                    dcc.Graph(
                        id="run-detail-spectrum",
                        figure=figures.spectrum_figure(
                            spectrum, R.run_rank(doc, run), "query eigenvalue spectrum"
                        )
                        if spectrum
                        else figures.empty_figure("no query spectrum stored"),
                    ),
                    dcc.Graph(
                        id="run-detail-runs",
                        style={"grid-column": "1 / -1"},
                        figure=figures.head_runs_figure(
                            across,
                            [m for m in R.MAIN_METRICS if m in R.metric_names(doc)],
                            "this head across configurations",
                        ),
                    ),
                ],
                style=GRID,
            ),
        ]
    )
