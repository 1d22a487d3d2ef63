"""Perplexity page: every configuration's perplexity, excess, share of excess removed by HeadQ and
effective key/value bits, as a sortable table (CSV export) and bar charts, each value with the
document's 95% interval when it has one; below them the budget view (excess perplexity against
effective bits, keys-only and key-and-value runs in separate panels, each with its Pareto frontier)
and the excess NLL of every configuration against token position (does the damage grow with context?).
The CSV export is ``<job>-perplexity.csv``: plain UTF-8 (no BOM), raw numbers, intervals as
``*_lo``/``*_hi`` columns, the share removed as a fraction."""

from __future__ import annotations

import csv
import io
from typing import Literal

import dash
from dash import Input, Output, State, callback, dcc, html
from dash.dash_table.DataTable import DataTable

from app.dashboard import charts, figures
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

INTERVAL = "95% interval"
COLUMNS: list[tuple[str, str, Literal["text", "numeric"]]] = [
    ("run", "configuration", "text"),
    ("perplexity", "perplexity", "numeric"),
    ("perplexity_ci", INTERVAL, "text"),
    ("excess", "excess perplexity", "numeric"),
    ("excess_ci", INTERVAL, "text"),
    ("excess_removed", "share of excess removed (%)", "numeric"),
    ("excess_removed_ci", INTERVAL, "text"),
    ("key_bits", "effective key bits", "numeric"),
    ("value_bits", "effective value bits", "numeric"),
    ("tokens", "tokens", "numeric"),
]

CI_FIELDS = ("perplexity_ci", "excess_ci", "excess_removed_ci")
PERCENT = {"excess_removed", "excess_removed_ci"}  # shown as percentages, as on the chart
NO_INTERVALS = "No intervals: this document has no per-window values (it predates them)."


def _interval_text(field: str, ci: list[float] | None) -> str:
    if ci is None:
        return ""
    return f"[{ci[0]:.1%}, {ci[1]:.1%}]" if field in PERCENT else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def table_rows(rows: list[dict]) -> list[dict]:
    """The table's rows: each interval as text ``[lo, hi]`` (empty without one; percentages for the
    share removed)."""
    return [{**r, **{f: _interval_text(f, r[f]) for f in CI_FIELDS}} for r in rows]


def csv_text(rows: list[dict]) -> str:
    """The rows as CSV: one column per table column, each ``<field>_ci`` as ``<field>_lo, <field>_hi``."""
    header = [c for field, _, _ in COLUMNS
              for c in ((f"{field[:-3]}_lo", f"{field[:-3]}_hi") if field in CI_FIELDS else (field,))]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        writer.writerow([v for field, _, _ in COLUMNS
                         for v in ((r[field] or ["", ""]) if field in CI_FIELDS else [r[field]])])
    return out.getvalue()


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
                    {"id": c, "name": n, "type": t,
                     "format": {"specifier": ".1%" if c in PERCENT else ".4~g"}} for c, n, t in COLUMNS
                ],
                data=[],
                sort_action="native",
                style_cell={"font-family": "sans-serif"},
            ),
            html.Button("Export CSV", id="ppl-export", n_clicks=0, style={"margin-top": "6px"}),
            dcc.Download(id="ppl-download"),
            html.P(id="ppl-uncertainty", style={"color": "#444", "font-size": "13px"}),
            dcc.Graph(id="ppl-bars"),
            dcc.Graph(id="ppl-removed"),
            dcc.Graph(id="ppl-budget"),
            dcc.Graph(id="ppl-positions"),
        ]
    )


@callback(
    Output("ppl-table", "data"),
    Output("ppl-uncertainty", "children"),
    Output("ppl-bars", "figure"),
    Output("ppl-removed", "figure"),
    Output("ppl-budget", "figure"),
    Output("ppl-positions", "figure"),
    Output("ppl-message", "children"),
    Input("ppl-job", "value"),
)
def draw(job):
    doc, error = load_results(job)
    if doc is None:
        message = error or "Choose a job."
        empty = figures.empty_figure(message)
        return [], None, empty, empty, empty, empty, error_banner(message)
    rows = R.perplexity_rows(doc)
    positions = charts.position_figure(doc.get("position_nll"), [r["run"] for r in rows])
    return (table_rows(rows), R.uncertainty_line(doc) or NO_INTERVALS, charts.perplexity_figure(rows),
            charts.removed_figure(rows), charts.budget_panels(*R.budget_split(doc)), positions, None)


@callback(
    Output("ppl-download", "data"),
    Input("ppl-export", "n_clicks"),
    State("ppl-job", "value"),
    prevent_initial_call=True,
)
def export(_clicks, job):
    doc, _ = load_results(job)
    if doc is None:
        return dash.no_update
    return dcc.send_string(csv_text(R.perplexity_rows(doc)), f"{job}-perplexity.csv", type="text/csv")
