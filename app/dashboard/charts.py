"""Run-level charts of the dashboard: perplexity and share removed with error bars, the bits
budget with its Pareto front, the predictor scatter (plotly figure dicts, no Dash)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from app.dashboard.figures import base_layout, empty_figure, label

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
UNITS = {"attn_kl": "nats", "fisher": "nats", "key_mse": "squared key units"}


def axis_title(metric: str) -> str:
    """A metric's label with its unit, e.g. ``attention KL (attn_kl) [nats]``."""
    unit = UNITS.get(metric)
    return label(metric) + (f" [{unit}]" if unit else "")


def configuration_colours(names: Sequence[str]) -> tuple[list, dict]:
    """A stepped colour scale giving configuration ``i`` of ``names`` the palette's colour ``i``, and
    the colour bar that names them: the legend of a one-trace scatter coloured by configuration."""
    n = max(len(names), 1)
    scale = [step for i in range(n) for step in ([i / n, PALETTE[i % len(PALETTE)]],
                                                 [(i + 1) / n, PALETTE[i % len(PALETTE)]])]
    bar = {"title": {"text": "configuration"}, "tickvals": list(range(len(names))), "ticktext": list(names),
           "len": 0.9, "thickness": 12}
    return scale, bar


def predictor_figure(
    x: np.ndarray,
    y: np.ndarray,
    runs: np.ndarray,
    x_metric: str,
    rho: float | None,
    rho_ci: tuple[float, float] | None = None,
) -> dict:
    """Scatter of ``attn_kl`` (``y``) against a predictor (``x``) over heads, log-log, one trace
    coloured by configuration with a colour bar naming them; axes titled with their units; the title
    gives Spearman ``rho`` and its interval ``rho_ci`` when known."""
    runs = np.asarray(runs).tolist()
    names = sorted(set(runs))
    scale, bar = configuration_colours(names)
    trace = {
        "type": "scatter",
        "mode": "markers",
        "x": np.asarray(x).tolist(),
        "y": np.asarray(y).tolist(),
        "text": runs,
        "marker": {"size": 5, "opacity": 0.6, "color": [names.index(r) for r in runs], "colorscale": scale,
                   "cmin": -0.5, "cmax": len(names) - 0.5, "showscale": bool(names), "colorbar": bar},
        "hovertemplate": "%{text}<br>" + x_metric + " %{x:.3g}<br>attn_kl %{y:.3g}<extra></extra>",
    }
    rho_text = "n/a" if rho is None else f"{rho:.3f}" + rho_interval(rho_ci)
    layout = base_layout(
        f"attn_kl vs {x_metric}: Spearman ρ = {rho_text}",
        380,
        xaxis={"title": {"text": axis_title(x_metric)}, "type": "log"},
        yaxis={"title": {"text": axis_title("attn_kl")}, "type": "log"},
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
CLIP_FACTOR = 10.0  # an excess this many times the (lower) median one is drawn at the axis top


def clip_limit(values: Sequence[float]) -> float | None:
    """The top of the excess axis when a value would flatten the others (``CLIP_FACTOR`` times the
    lower median of the positive values, when some value exceeds it); else None."""
    positive = sorted(v for v in values if v > 0)
    if not positive:
        return None
    limit = CLIP_FACTOR * positive[(len(positive) - 1) // 2]
    return limit if max(values) > limit else None


def _off_scale(rows: Sequence[Mapping], x: str, limit: float) -> dict:
    """Excesses above ``limit`` as up-triangles at the axis top, labelled with their true value."""
    return {
        "type": "scatter",
        "mode": "markers+text",
        "name": "off the scale",
        "x": [r[x] for r in rows],
        "y": [limit] * len(rows),
        "text": [f"{r['run']} +{r['excess']:.3g}" for r in rows],
        "textposition": "bottom center",
        "marker": {"size": 10, "symbol": "triangle-up", "color": "black"},
        "hovertemplate": "%{text} (off the scale)<extra></extra>",
    }


def budget_figure(rows: Sequence[Mapping], x: str = "key_bits", x_title: str = "effective key bits") -> dict:
    """Excess perplexity against ``rows[x]`` bits: one marker trace per kind (``plain``, ``HeadQ``,
    ``other``; rows ``{run, kind, <x>, excess}``, rows without both numbers are skipped; error bars
    from an optional ``excess_ci``) and the Pareto frontier of the plain and HeadQ points as a line.
    An excess past :func:`clip_limit` is drawn at the axis top as an ``off the scale`` marker."""
    rows = [r for r in rows if r.get(x) is not None and r.get("excess") is not None]
    limit = clip_limit([r["excess"] for r in rows])
    shown = [r for r in rows if limit is None or r["excess"] <= limit]
    data = []
    for kind in BUDGET_KINDS:
        chosen = [r for r in shown if r.get("kind") == kind]
        if chosen:
            trace = {
                "type": "scatter",
                "mode": "markers",
                "name": kind,
                "x": [r[x] for r in chosen],
                "y": [r["excess"] for r in chosen],
                "text": [r["run"] for r in chosen],
                "marker": {"size": 7, "symbol": "diamond" if kind == "HeadQ" else "circle"},
                "hovertemplate": "%{text}<br>%{x:.4g} " + x_title + "<br>excess %{y:.4g}<extra></extra>",
            }
            data.append(_with_errors(trace, [r.get("excess_ci") for r in chosen]))
    front = pareto_front([(r[x], r["excess"]) for r in rows if r.get("kind") in ("plain", "HeadQ")])
    if front:
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "Pareto frontier",
                "x": [bits for bits, _ in front],
                "y": [excess for _, excess in front],
                "line": {"color": "black", "shape": "hv", "width": 1},
                "hoverinfo": "skip",
            }
        )
    yaxis: dict = {"title": {"text": "excess perplexity"}}
    if limit is not None:
        data.append(_off_scale([r for r in rows if r["excess"] > limit], x, limit))
        lows = [r["excess"] for r in shown] + [r["excess_ci"][0] for r in shown if r.get("excess_ci")]
        low = min([0.0, *lows])
        yaxis["range"] = [low, limit * 1.1]
    layout = base_layout(f"excess perplexity against {x_title}", 400, xaxis={"title": {"text": x_title}},
                         yaxis=yaxis)
    return {"data": data, "layout": layout}


PANELS = (("K only", "key_bits", "effective key bits (values dense)"),
          ("K and V", "mean_bits", "mean effective bits of K and V"))


def budget_panels(key_only: Sequence[Mapping], key_value: Sequence[Mapping]) -> dict:
    """Two budget panels side by side, each with its own kinds, frontier and clipping: runs that
    quantize keys only against effective key bits, runs that quantize keys and values against the
    mean of their key and value bits (a frontier never joins runs of the two kinds)."""
    data, layout = [], base_layout("excess perplexity against effective bits: K only | K and V", 420)
    for i, (rows, (panel, x, title)) in enumerate(zip((key_only, key_value), PANELS, strict=True)):
        fig, axis = budget_figure(rows, x, title), "" if i == 0 else "2"
        data += [{**t, "name": f"{panel} · {t['name']}", "xaxis": f"x{axis}", "yaxis": f"y{axis}"}
                 for t in fig["data"]]
        layout[f"xaxis{axis}"] = {**fig["layout"]["xaxis"], "domain": [0.55 * i, 0.45 + 0.55 * i],
                                  "anchor": f"y{axis}"}
        layout[f"yaxis{axis}"] = {**fig["layout"]["yaxis"], "anchor": f"x{axis}"}
    return {"data": data, "layout": layout}


NO_POSITIONS = "No NLL per position: this document predates it."


def position_figure(block: Mapping | None, runs: Sequence[str]) -> dict:
    """Excess NLL against token position (log x) for ``runs``: one line per run over the results
    document's ``position_nll`` buckets, each point at its bucket's first position; the mean NLL
    when the document has no dense run to take the excess over."""
    if not block:
        return empty_figure(NO_POSITIONS)
    excess = block.get("excess_nll") or {}
    values = excess or block.get("nll") or {}
    shown = [r for r in runs if r in values and r != block.get("baseline")]
    if not shown:
        return empty_figure("No configuration with NLL per position here.")
    edges = list(block["edges"])
    x = [int(lo) for lo in edges[:-1]]
    ends = [int(hi) - 1 for hi in edges[1:]]
    data = [{"type": "scatter", "mode": "lines+markers", "name": run, "x": x, "y": values[run],
             "customdata": ends, "line": {"color": PALETTE[i % len(PALETTE)]}, "marker": {"size": 4},
             "hovertemplate": f"{run}<br>positions %{{x}}–%{{customdata}}<br>%{{y:.4g}} nats<extra></extra>"}
            for i, run in enumerate(shown)]
    what = f"excess NLL over {block['baseline']}" if excess else "NLL"
    layout = base_layout(f"{what} against token position", 360,
                         xaxis={"title": {"text": "token position in the window"}, "type": "log"},
                         yaxis={"title": {"text": f"{what} [nats per token]"}})
    return {"data": data, "layout": layout}
