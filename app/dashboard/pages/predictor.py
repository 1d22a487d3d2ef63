"""Predictor check: does ``fisher`` predict ``attn_kl`` better than ``key_mse``? (METHOD.md's first claim)

Scatter of per-head ``attn_kl`` against each predictor over all heads of the chosen
configurations (log axes), with Spearman's rank correlation (scipy.stats.spearmanr) and its 95%
interval: the evaluator's paired bootstrap over windows when the document has it for the chosen
configurations (one, or all of them), else heads resampled with replacement
(``stats.spearman_interval``). A table gives each configuration's rho with its interval.
"""

from __future__ import annotations

import dash
from dash import Input, Output, callback, dcc, html
from dash.dash_table.DataTable import DataTable

from app.dashboard import charts, figures
from app.dashboard import results as R
from app.dashboard.common import (
    GRID,
    NO_RESULTS,
    ROW,
    empty_state,
    error_banner,
    evaluation_jobs,
    linked_job,
    load_results,
    picker,
)
from app.dashboard.stats import SPEARMAN_REPLICATES, spearman_interval

dash.register_page(__name__, path="/predictor", name="Predictor check", title="HeadQ Lab · Predictor check")


def layout(job=None, **_query) -> html.Div:
    options, error = evaluation_jobs()
    if error or not options:
        return html.Div(
            [html.H2("Predictor check"), error_banner(error) if error else empty_state(NO_RESULTS)]
        )
    job, note = linked_job(job, options)
    doc, error = load_results(job)
    error = error or note
    runs = R.run_names(doc) if doc else []
    return html.Div(
        [
            html.H2("Predictor check"),
            html.P(
                "Across heads, the score-space error (fisher) should rank heads by attention KL far better "
                "than key MSE. Heads with a zero or missing value (e.g. the dense reference) are left out."
            ),
            html.Div(
                [
                    picker("pred-job", options, job, "job"),
                    picker("pred-runs", runs, runs, "configurations", multi=True),
                ],
                style=ROW,
            ),
            html.Div(error_banner(error) if error else None, id="pred-message"),
            html.Div(id="pred-summary", style={"font-size": "16px", "margin": "8px 0"}),
            html.Div([dcc.Graph(id="pred-fisher"), dcc.Graph(id="pred-key_mse")], style=GRID),
            DataTable(id="pred-table", columns=[{"id": c, "name": n} for c, n in TABLE_COLUMNS], data=[],
                      sort_action="native", style_cell={"font-family": "sans-serif"}),
        ]
    )


TABLE_COLUMNS = [("run", "configuration"), ("heads", "heads"), ("fisher", "ρ(attn_kl, fisher) [95% CI]"),
                 ("key_mse", "ρ(attn_kl, key_mse) [95% CI]")]


def table_rows(doc: dict) -> list[dict]:
    """Each configuration's rho per predictor as text ``0.912 [0.880, 0.935]`` (the evaluator's own)."""
    return [{"run": r["run"], "heads": r["heads"],
             **{m: "n/a" if r[m] is None else f"{r[m]:.3f}" + charts.rho_interval(r[f"{m}_ci"])
                for m in R.PREDICTORS}}
            for r in R.correlation_rows(doc)]


@callback(
    Output("pred-runs", "options"),
    Output("pred-runs", "value"),
    Input("pred-job", "value"),
    prevent_initial_call=True,
)
def choose_job(job):
    doc, _ = load_results(job)
    runs = R.run_names(doc) if doc else []
    return runs, runs


@callback(
    Output("pred-fisher", "figure"),
    Output("pred-key_mse", "figure"),
    Output("pred-summary", "children"),
    Output("pred-table", "data"),
    Input("pred-job", "value"),
    Input("pred-runs", "value"),
)
def draw(job, runs):
    doc, error = load_results(job)
    if doc is None:
        message = error or "Choose a job."
        return figures.empty_figure(message), figures.empty_figure(message), error_banner(message), []
    chosen = list(runs or [])
    points = R.predictor_points(doc, chosen)
    rho = R.rank_correlations(points)
    windows = R.window_correlations(doc, sorted(set(points["run"].tolist())))  # runs with heads
    if windows is not None:
        ci = {m: tuple(windows[m]) for m in rho}
        source = f"paired bootstrap over the {(doc.get('dataset') or {}).get('head_windows', '?')} windows"
    else:
        ci = {m: spearman_interval(points[m], points["attn_kl"]) for m in rho}
        source = f"{SPEARMAN_REPLICATES} bootstrap resamples of the heads"
    figs = [
        charts.predictor_figure(points[m], points["attn_kl"], points["run"], m, rho[m], ci[m])
        for m in R.PREDICTORS
    ]
    fmt = {m: "n/a (fewer than 3 heads)" if v is None else f"{v:.3f}" + charts.rho_interval(ci[m])
           for m, v in rho.items()}
    summary = (
        f"Spearman ρ(attn_kl, fisher) = {fmt['fisher']}   ·   ρ(attn_kl, key_mse) = {fmt['key_mse']}"
        f"   ·   {len(points['attn_kl'])} heads   ·   95% intervals: {source}"
    )
    return figs[0], figs[1], html.Span(summary, id="pred-rho"), table_rows(doc)
