"""The report's PNG figures: which dashboard figure functions draw which file (drawn by
:func:`studies.paper.render.render_png`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.dashboard import charts as C
from app.dashboard import figures as F
from app.dashboard import results as R
from studies.paper.analysis import GOAL_RUN
from studies.paper.records import k_only


def figure_specs(items: dict[str, dict[str, Any]], s: dict[str, Any]) -> dict[str, Callable[[], dict]]:
    """``{file name: builder}`` of the report's figures, each from a dashboard figure function."""
    out: dict[str, Callable[[], dict]] = {"budget.png": lambda: C.budget_figure(s["frontier"]["rows"])}
    exp1 = items.get("exp1-k2-pc-g32", {}).get("results")
    if exp1:
        keep = [
            r
            for r in exp1["runs"]
            if r["name"] in ("dense", GOAL_RUN)
            or (r["name"].startswith(GOAL_RUN + "+") and r["name"].endswith("s8"))
        ]
        out["exp1-k2-pc-g32-r0.png"] = lambda: _wide(C.perplexity_figure(R.perplexity_rows({"runs": keep})))
        for run in (GOAL_RUN, GOAL_RUN + "+hq16s8"):
            if run in R.run_names(exp1):
                out[f"heatmap-attn_kl-{run}.png"] = _heatmap(exp1, run, "attn_kl", True)
        if GOAL_RUN in R.run_names(exp1):
            out["heatmap-entropy.png"] = _heatmap(exp1, GOAL_RUN, "entropy", False)
    if "exp4-fullkv" in items:
        out["exp4-fullkv.png"] = lambda: _wide(
            C.perplexity_figure(R.perplexity_rows(items["exp4-fullkv"]["results"]))
        )
    if "exp2-controls" in items:
        doc = items["exp2-controls"]["results"]
        points = R.predictor_points(doc, [r["name"] for r in doc["runs"] if k_only(r.get("spec") or {})])
        rho = R.rank_correlations(points) if len(points["attn_kl"]) else {"fisher": None, "key_mse": None}
        for metric in ("fisher", "key_mse"):
            out[f"predictor-{metric}-exp2.png"] = _predictor(points, metric, rho[metric])
    cal = items.get("paper-cal-sotu", {}).get("results")
    if cal and (cal.get("arrays") or {}).get("query_spectrum"):
        spectrum = cal["arrays"]["query_spectrum"][0][0]
        out["spectrum-layer0-kv0.png"] = lambda: F.spectrum_figure(
            spectrum, 16, "query spectrum, layer 0, KV head 0"
        )
    return out


def _wide(fig: dict) -> dict:
    """A bar chart sized for print: wide, with room for its two-line slanted tick labels."""
    layout = fig["layout"]
    return {
        **fig,
        "layout": {**layout, "width": 1400, "height": 560, "margin": {**layout["margin"], "b": 150}},
    }


def _heatmap(doc: dict, run: str, metric: str, log: bool) -> Callable[[], dict]:
    def build() -> dict:
        fig = F.heatmap_figure(R.head_matrix(doc, run, metric), metric, log=log)
        title = fig["layout"]["title"]
        return {**fig, "layout": {**fig["layout"], "title": {**title, "text": f"{run}: {title['text']}"}}}

    return build


def _predictor(points: dict, metric: str, rho: float | None) -> Callable[[], dict]:
    return lambda: C.predictor_figure(points[metric], points["attn_kl"], points["run"], metric, rho)
