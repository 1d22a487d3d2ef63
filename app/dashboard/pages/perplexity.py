"""Perplexity page: every configuration's perplexity, excess, share of excess removed by HeadQ and
effective key/value bits, as a sortable table (CSV export) and a bar chart; below it the budget view
(excess perplexity against effective key bits, with the Pareto frontier)."""

from __future__ import annotations

from typing import Literal

import dash
from dash import Input, Output, callback, dcc, html
from dash.dash_table.DataTable import DataTable

from app.dashboard import figures
from app.dashboard import results as R
from app.dashboard.common import (
    NO_RESULTS,
    ROW,
    empty_state,
    error_banner,
    evaluation_jobs,
    linked_job,
    load_results,
    picker,
)

dash.register_page(__name__, path="/perplexity", name="Perplexity", title="HeadQ Lab · Perplexity")

COLUMNS: list[tuple[str, str, Literal["text", "numeric"]]] = [
    ("run", "configuration", "text"),
    ("perplexity", "perplexity", "numeric"),
    ("excess", "excess perplexity", "numeric"),
    ("excess_removed", "share of excess removed", "numeric"),
    ("key_bits", "effective key bits", "numeric"),
    ("value_bits", "effective value bits", "numeric"),
    ("tokens", "tokens", "numeric"),
]


def layout(job=None, **_query) -> html.Div:
    options, error = evaluation_jobs()
    if error or not options:
        return html.Div([html.H2("Perplexity"), error_banner(error) if error else empty_state(NO_RESULTS)])
    job, note = linked_job(job, options)
    return html.Div(
        [
            html.H2("Perplexity"),
            html.Div([picker("ppl-job", options, job, "job")], style=ROW),
            html.Div(error_banner(note) if note else None, id="ppl-note"),
            html.Div(id="ppl-message"),
            DataTable(
                id="ppl-table",
                columns=[
                    {"id": c, "name": n, "type": t, "format": {"specifier": ".4~g"}} for c, n, t in COLUMNS
                ],
                data=[],
                sort_action="native",
                export_format="csv",
                style_cell={"font-family": "sans-serif"},
            ),
            dcc.Graph(id="ppl-bars"),
            dcc.Graph(id="ppl-budget"),
        ]
    )


@callback(
    Output("ppl-table", "data"),
    Output("ppl-bars", "figure"),
    Output("ppl-budget", "figure"),
    Output("ppl-message", "children"),
    Input("ppl-job", "value"),
)
def draw(job):
    doc, error = load_results(job)
    if doc is None:
        message = error or "Choose a job."
        return [], figures.empty_figure(message), figures.empty_figure(message), error_banner(message)
    rows = R.perplexity_rows(doc)
    return rows, figures.perplexity_figure(rows), figures.budget_figure(R.budget_rows(doc)), None
