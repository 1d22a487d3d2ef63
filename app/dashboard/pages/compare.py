"""Compare page: two configurations (of one job or of two jobs) side by side, and B − A; above
them the perplexity difference A − B with a paired bootstrap interval when both were scored on the
same windows. A and B share one colour scale unless that option is cleared.

Deep link: ``/compare?job=..&run=..&job_b=..&run_b=..&metric=..``.
"""

from __future__ import annotations

import dash
from dash import Input, Output, callback, dcc, html

from app.dashboard import figures
from app.dashboard import results as R
from app.dashboard.common import (
    GRID,
    NO_RESULTS,
    ROW,
    empty_state,
    error_banner,
    evaluation_jobs,
    linked_job,
    linked_run,
    load_results,
    pick,
    picker,
)
from app.dashboard.run_views import shared_range

dash.register_page(__name__, path="/compare", name="Compare", title="HeadQ Lab · Compare")


def _runs(job) -> list[str]:
    doc, _ = load_results(job)
    return R.run_names(doc) if doc else []


def layout(job=None, run=None, job_b=None, run_b=None, metric=None, **_query) -> html.Div:
    options, error = evaluation_jobs()
    if error or not options:
        return html.Div([html.H2("Compare"), error_banner(error) if error else empty_state(NO_RESULTS)])
    (job_a, note), job_b = linked_job(job, options), pick(job_b or job, options)
    doc, _ = load_results(job_a)
    runs_a, runs_b = _runs(job_a), _runs(job_b)
    run_a, note_a = linked_run(run, runs_a, R.default_run(doc)) if doc else (None, None)
    # B: the linked configuration, else the one after A (e.g. k2 -> k2-headq-r8)
    after = runs_b[runs_b.index(run_a) + 1 :] if run_a in runs_b else runs_b
    run_b, note_b = linked_run(run_b, runs_b, pick(None, [{"value": r} for r in after or runs_b]), "run_b")
    notes = [error_banner(n) for n in (note, note_a, note_b) if n]
    metrics = R.metric_names(doc) if doc else []
    return html.Div(
        [
            html.H2("Compare"),
            html.Div(
                [
                    picker("cmp-job-a", options, job_a, "job A"),
                    picker("cmp-run-a", runs_a, run_a, "configuration A"),
                    picker("cmp-job-b", options, job_b, "job B"),
                    picker("cmp-run-b", runs_b, run_b, "configuration B"),
                    picker("cmp-metric", metrics, pick(metric, [{"value": m} for m in metrics]), "metric"),
                    dcc.Checklist(id="cmp-log", options=[{"label": "log", "value": "log"}], value=[]),
                    dcc.Checklist(
                        id="cmp-shared",
                        options=[{"label": "one colour scale for A and B", "value": "shared"}],
                        value=["shared"],
                    ),
                ],
                style=ROW,
            ),
            html.Div(notes or None, id="cmp-note"),
            html.Div(id="cmp-message"),
            html.P(id="cmp-ppl", style={"font-size": "15px"}),
            html.Div([dcc.Graph(id="cmp-a"), dcc.Graph(id="cmp-b"), dcc.Graph(id="cmp-diff")], style=GRID),
        ]
    )


@callback(Output("cmp-run-a", "options"), Input("cmp-job-a", "value"), prevent_initial_call=True)
def runs_a(job):
    return _runs(job)


@callback(Output("cmp-run-b", "options"), Input("cmp-job-b", "value"), prevent_initial_call=True)
def runs_b(job):
    return _runs(job)


@callback(
    Output("cmp-a", "figure"),
    Output("cmp-b", "figure"),
    Output("cmp-diff", "figure"),
    Output("cmp-ppl", "children"),
    Output("cmp-message", "children"),
    Input("cmp-job-a", "value"),
    Input("cmp-run-a", "value"),
    Input("cmp-job-b", "value"),
    Input("cmp-run-b", "value"),
    Input("cmp-metric", "value"),
    Input("cmp-log", "value"),
    Input("cmp-shared", "value"),
)
def draw(job_a, run_a, job_b, run_b, metric, log, shared):
    doc_a, err_a = load_results(job_a)
    doc_b, err_b = load_results(job_b)
    ppl = None
    if doc_a is not None and doc_b is not None:
        ppl = R.perplexity_difference(doc_a, run_a, doc_b, run_b, job_a == job_b)
    try:
        if doc_a is None or doc_b is None or not (run_a and run_b and metric):
            raise ValueError(err_a or err_b or "Choose two configurations and a metric.")
        a, b = R.head_matrix(doc_a, run_a, metric), R.head_matrix(doc_b, run_b, metric)
        zrange = shared_range([a, b], bool(log)) if shared else None
        figs = [
            figures.heatmap_figure(a, metric, bool(log), zrange=zrange),
            figures.heatmap_figure(b, metric, bool(log), zrange=zrange),
            figures.difference_figure(a, b, metric, bool(log)),
        ]
    except ValueError as exc:
        return *[figures.empty_figure(str(exc))] * 3, ppl, error_banner(str(exc))
    figs[0]["layout"]["title"]["text"] = f"A: {run_a} · {metric}"
    figs[1]["layout"]["title"]["text"] = f"B: {run_b} · {metric}"
    return *figs, ppl, None
