"""Run-level charts of the dashboard: perplexity and share removed with error bars, the bits
budget with its Pareto front, the predictor scatter (plotly figure dicts, no Dash)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from app.dashboard.figures import base_layout, empty_figure, label


def predictor_figure(
    x: np.ndarray,
    y: np.ndarray,
    runs: np.ndarray,
    x_metric: str,
    rho: float | None,
    rho_ci: tuple[float, float] | None = None,
) -> dict:
    """Scatter of ``attn_kl`` (``y``) against a predictor (``x``) over heads, log-log, one trace;
    the title gives Spearman ``rho`` and its interval ``rho_ci`` when known."""
    runs = np.asarray(runs).tolist()
    names = sorted(set(runs))
    trace = {
        "type": "scatter",
        "mode": "markers",
        "x": np.asarray(x).tolist(),
        "y": np.asarray(y).tolist(),
        "text": runs,
        "marker": {"size": 5, "opacity": 0.6, "color": [names.index(r) for r in runs], "colorscale": "Turbo"},
        "hovertemplate": "%{text}<br>" + x_metric + " %{x:.3g}<br>attn_kl %{y:.3g}<extra></extra>",
    }
    rho_text = "n/a" if rho is None else f"{rho:.3f}" + rho_interval(rho_ci)
    layout = base_layout(
        f"attn_kl vs {x_metric}: Spearman ρ = {rho_text}",
        380,
        xaxis={"title": {"text": label(x_metric)}, "type": "log"},
        yaxis={"title": {"text": label("attn_kl")}, "type": "log"},
    )
    return {"data": [trace], "layout": layout}


def rho_interval(ci: tuple[float, float] | None) -> str:
    """`` [lo, hi]`` of a rank correlation's interval, or nothing."""
    return "" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _bar_label(row: Mapping) -> str:
    """``+6.00`` or ``+0.70 (88% removed)``: the excess perplexity over the dense model."""
    if row.get("excess") is None:
        return ""
    removed = row.get("excess_removed")
    return f"+{row['excess']:.2f}" + ("" if removed is None else f" ({removed:.0%} removed)")


def _bits(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def error_bars(values: Sequence[float | None], intervals: Sequence[Sequence[float] | None]) -> dict | None:
    """Asymmetric plotly ``error_y`` reaching each ``[lo, hi]`` interval from its value (no bar where
    either is missing); None when no value has an interval (an older document)."""
    pairs = [(v, ci) if v is not None and ci else None for v, ci in zip(values, intervals, strict=True)]
    if not any(pairs):
        return None
    return {
        "type": "data",
        "symmetric": False,
        "array": [None if p is None else max(p[1][1] - p[0], 0.0) for p in pairs],
        "arrayminus": [None if p is None else max(p[0] - p[1][0], 0.0) for p in pairs],
        "thickness": 1.5,
        "width": 4,
    }


def _with_errors(trace: dict, intervals: Sequence[Sequence[float] | None]) -> dict:
    errors = error_bars(trace["y"], intervals)
    return trace if errors is None else {**trace, "error_y": errors}


def perplexity_figure(rows: Sequence[Mapping]) -> dict:
    """Bar chart of perplexity per configuration (one trace, error bars from ``perplexity_ci``);
    each bar is labelled with its excess and share of excess removed, each tick with its effective
    key/value bits."""
    ticks = [
        f"{r['run']}<br>K {_bits(r.get('key_bits'))} / V {_bits(r.get('value_bits'))} bits" for r in rows
    ]
    trace = {
        "type": "bar",
        "x": ticks,
        "y": [r.get("perplexity") for r in rows],
        "text": [_bar_label(r) for r in rows],
        "textposition": "inside",
        "insidetextanchor": "start",  # at the foot of the bar, clear of the error bar
        "textangle": 0,
        "hovertemplate": "%{x}<br>perplexity %{y:.3f}<br>excess %{text}<extra></extra>",
    }
    return {
        "data": [_with_errors(trace, [r.get("perplexity_ci") for r in rows])],
        "layout": base_layout("perplexity per configuration", 400, yaxis={"title": {"text": "perplexity"}}),
    }


def removed_figure(rows: Sequence[Mapping]) -> dict:
    """Share of its base run's excess each HeadQ configuration removes (rows with an
    ``excess_removed``; error bars from ``excess_removed_ci``), one bar trace."""
    rows = [r for r in rows if r.get("excess_removed") is not None]
    if not rows:
        return empty_figure("No HeadQ configuration with its base run in this job.")
    trace = {
        "type": "bar",
        "x": [r["run"] for r in rows],
        "y": [r["excess_removed"] for r in rows],
        "hovertemplate": "%{x}<br>%{y:.1%} of the excess removed<extra></extra>",
    }
    return {
        "data": [_with_errors(trace, [r.get("excess_removed_ci") for r in rows])],
        "layout": base_layout(
            "share of the base run's excess perplexity removed by HeadQ",
            340,
            yaxis={"title": {"text": "share removed"}, "tickformat": ".0%"},
        ),
    }


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto frontier of ``(bits, excess)`` points (lower is better on both), sorted by bits:
    each point whose excess is below that of every point at fewer or equal bits."""
    front: list[tuple[float, float]] = []
    for x, y in sorted((float(x), float(y)) for x, y in points):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


BUDGET_KINDS = ("plain", "HeadQ", "other")


def budget_figure(rows: Sequence[Mapping]) -> dict:
    """Excess perplexity against effective key bits: one marker trace per kind (``plain``,
    ``HeadQ``, ``other``; rows ``{run, kind, key_bits, excess}``, rows without both numbers are
    skipped; error bars from an optional ``excess_ci``) and the Pareto frontier of the plain and
    HeadQ points as a line."""
    rows = [r for r in rows if r.get("key_bits") is not None and r.get("excess") is not None]
    data = []
    for kind in BUDGET_KINDS:
        chosen = [r for r in rows if r.get("kind") == kind]
        if chosen:
            trace = {
                "type": "scatter",
                "mode": "markers",
                "name": kind,
                "x": [r["key_bits"] for r in chosen],
                "y": [r["excess"] for r in chosen],
                "text": [r["run"] for r in chosen],
                "marker": {"size": 7, "symbol": "diamond" if kind == "HeadQ" else "circle"},
                "hovertemplate": "%{text}<br>%{x:.4g} key bits<br>excess %{y:.4g}<extra></extra>",
            }
            data.append(_with_errors(trace, [r.get("excess_ci") for r in chosen]))
    front = pareto_front([(r["key_bits"], r["excess"]) for r in rows if r.get("kind") in ("plain", "HeadQ")])
    if front:
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "Pareto frontier",
                "x": [x for x, _ in front],
                "y": [y for _, y in front],
                "line": {"color": "black", "shape": "hv", "width": 1},
                "hoverinfo": "skip",
            }
        )
    layout = base_layout(
        "excess perplexity against effective key bits",
        400,
        xaxis={"title": {"text": "effective key bits"}},
        yaxis={"title": {"text": "excess perplexity"}},
    )
    return {"data": data, "layout": layout}
