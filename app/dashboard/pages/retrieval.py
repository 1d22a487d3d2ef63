"""Retrieval page: needle-in-a-haystack accuracy of each configuration, and the heads that lose
the needle.

Deep link: ``/retrieval?job=<id>&run=<name>``. Above, each run's accuracy beside its effective bits
(a table) and its depth × context-length accuracy heatmap (dense first). Below, for one quantized
run, the layer × head heatmap of needle attention lost at the answer's first step; clicking a head
links to that head on the Run page of an evaluation job of the same model (its distortion metrics).
"""

from __future__ import annotations

from typing import Literal

import dash
from dash import Input, Output, callback, dcc, html
from dash.dash_table.DataTable import DataTable

from app.dashboard import retrieval_charts as RC
from app.dashboard.api import ApiError
from app.dashboard.common import (
    GRID,
    ROW,
    client,
    empty_state,
    error_banner,
    linked_run,
    load_results,
    page_link,
    pick,
    picker,
)
from app.dashboard.figures import empty_figure

dash.register_page(__name__, path="/retrieval", name="Retrieval", title="HeadQ Lab · Retrieval")

NO_RETRIEVAL = ("No finished retrieval job yet. Submit one with 'headq submit' (kind: retrieval) or "
                "'POST /api/v1/jobs', or run 'headq retrieve' locally.")
COLUMNS: list[tuple[str, str, Literal["text", "numeric"], str]] = [
    ("run", "configuration", "text", ""), ("accuracy", "accuracy", "numeric", ".0%"),
    ("correct", "correct", "numeric", "d"), ("prompts", "prompts", "numeric", "d"),
    ("key_bits", "effective key bits", "numeric", ".2f"),
    ("value_bits", "effective value bits", "numeric", ".2f"),
    ("needle_mass_lost", "needle attention lost (mean)", "numeric", ".4f"),
    ("attn_kl", "attention KL (mean)", "numeric", ".3g")]
CLICK_A_HEAD = "Click a head to open its detail on the Run page."


def _jobs(kind: str) -> tuple[list[dict], str | None]:
    """Succeeded jobs of ``kind`` as dropdown options (value: id, title: model id), or an error."""
    try:
        jobs = client().jobs(status="succeeded", kind=kind)
    except ApiError as exc:
        return [], str(exc)
    return [{"label": f"{j.get('label') or j.get('model_id') or 'job'} · {j['id'][:8]}", "value": j["id"],
             "title": j.get("model_id")} for j in jobs], None


def layout(job=None, run=None, **_query) -> html.Div:
    options, error = _jobs("retrieval")
    if error or not options:
        return html.Div([html.H2("Retrieval"), error_banner(error) if error else empty_state(NO_RETRIEVAL)])
    chosen = pick(job, options)
    note = f"job: {job} is not a succeeded retrieval job; showing the newest one instead." \
        if job and chosen != job else None
    return html.Div([
        html.H2("Retrieval"),
        html.Div([picker("ret-job", options, chosen, "job")], style=ROW),
        html.Div(error_banner(note) if note else None),
        html.Div(id="ret-message"),
        DataTable(id="ret-table", data=[], sort_action="native", style_cell={"font-family": "sans-serif"},
                  columns=[{"id": c, "name": n, "type": t, "format": {"specifier": f}}
                           for c, n, t, f in COLUMNS]),
        html.H3("Accuracy by needle depth and context length", style={"font-size": "15px"}),
        html.Div(id="ret-accuracy", style=GRID),
        html.H3("Which heads lose the needle", style={"font-size": "15px"}),
        html.Div([picker("ret-run", [], None, "configuration"),
                  picker("ret-eval", [], None, "evaluation job for the head detail")], style=ROW),
        dcc.Store(id="ret-linked-run", data=run),
        html.Div(id="ret-run-note"),
        dcc.Graph(id="ret-heads"),
        html.P(id="ret-top", style={"color": "#444", "font-size": "13px"}),
        html.Div(id="ret-head-link", children=empty_state(CLICK_A_HEAD)),
    ])


@callback(Output("ret-table", "data"), Output("ret-accuracy", "children"), Output("ret-run", "options"),
          Output("ret-run", "value"), Output("ret-run-note", "children"), Output("ret-eval", "options"),
          Output("ret-eval", "value"), Output("ret-message", "children"),
          Input("ret-job", "value"), Input("ret-linked-run", "data"))
def draw(job, linked):
    doc, error = load_results(job)
    if doc is None:
        return [], None, [], None, None, [], None, error_banner(error or "Choose a job.")
    runs = RC.quantized_runs(doc)
    run, note = linked_run(linked, runs, runs[0] if runs else None)
    evaluations, _ = _jobs("evaluation")
    model = (doc.get("model") or {}).get("id")
    same_model = [o for o in evaluations if o["title"] == model]
    graphs = [dcc.Graph(figure=figure, id=f"ret-accuracy-{i}")
              for i, figure in enumerate(RC.accuracy_figures(doc))]
    return (RC.run_table(doc), graphs, runs, run, error_banner(note) if note else None, same_model,
            same_model[0]["value"] if same_model else None, None)


@callback(Output("ret-heads", "figure"), Output("ret-top", "children"),
          Input("ret-job", "value"), Input("ret-run", "value"), Input("ret-heads", "clickData"))
def draw_heads(job, run, click):
    doc, error = load_results(job)
    if doc is None or run is None:
        message = error or "No quantized run with per-head rows in this job."
        return empty_figure(message), None
    matrix = RC.needle_lost_matrix(doc, run)
    worst = RC.top_heads(matrix)
    share = RC.share_in_top(matrix)
    text = "Most needle attention lost: " + ", ".join(f"layer {l}, head {h} ({v:.3f})" for l, h, v in worst)
    if share is not None:
        text += f"; these {len(worst)} heads carry {share:.0%} of all attention lost."
    return RC.needle_lost_figure(matrix, run, RC.head_of_click(click)), text if worst else None


@callback(Output("ret-head-link", "children"), Input("ret-heads", "clickData"), Input("ret-run", "value"),
          Input("ret-eval", "value"), prevent_initial_call=True)
def head_link(click, run, evaluation):
    head = RC.head_of_click(click)
    if head is None:
        return empty_state(CLICK_A_HEAD)
    if evaluation is None:
        return empty_state(f"Layer {head[0]}, head {head[1]}: no evaluation job of this model to show it in.")
    href = page_link("/run", job=evaluation, run=run, layer=head[0], head=head[1])
    return dcc.Link(f"layer {head[0]}, head {head[1]} of {run} on the Run page", href=href, id="ret-run-link")
