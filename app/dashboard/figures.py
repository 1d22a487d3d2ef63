"""Figures of the dashboard, built by pure functions: numbers in, a plotly figure dict out.

Figures are plain ``{"data": [...], "layout": {...}}`` dicts (what ``dcc.Graph`` takes), which
skips plotly's per-property validation (about 75 ms a heatmap here). Heatmaps are
``[layers, heads]`` matrices drawn as ONE heatmap trace per metric (never a trace per head); a
selected head is marked by a layout shape so every panel can show it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from app.dashboard.results import METRIC_LABELS

_MARGIN = {"l": 50, "r": 10, "t": 40, "b": 40}
DIVERGING = [[0.0, "#2166ac"], [0.5, "#f7f7f7"], [1.0, "#b2182b"]]  # blue: B lower, red: B higher


def label(metric: str) -> str:
    """Human name of a metric (the metric id when unknown)."""
    return METRIC_LABELS.get(metric, metric)


def log_values(matrix: np.ndarray) -> np.ndarray:
    """``log10`` of a matrix, NaN where a value is missing or not positive (no log of zero)."""
    m = np.asarray(matrix, dtype=float)
    out = np.full(m.shape, np.nan)
    ok = np.isfinite(m) & (m > 0)
    out[ok] = np.log10(m[ok])
    return out


def _nan_to_none(m: np.ndarray) -> list:
    """JSON-ready nested lists; NaN/inf become None (a gap in the heatmap)."""
    out = np.asarray(m, dtype=object)
    out[~np.isfinite(m)] = None
    return out.tolist()


def _layout(title: str, height: int, **extra) -> dict:
    return {"title": {"text": title, "font": {"size": 13}}, "margin": _MARGIN, "height": height, **extra}


def selection_shapes(selected: tuple[int, int] | None) -> list[dict]:
    """Red outline around the selected ``(layer, head)`` cell (empty list for none)."""
    if selected is None:
        return []
    layer, head = selected
    return [
        {
            "type": "rect",
            "xref": "x",
            "yref": "y",
            "x0": head - 0.5,
            "x1": head + 0.5,
            "y0": layer - 0.5,
            "y1": layer + 0.5,
            "line": {"color": "red", "width": 3},
        }
    ]


def _head_figure(trace: dict, title: str, selected: tuple[int, int] | None) -> dict:
    layout = _layout(
        title,
        360,
        shapes=selection_shapes(selected),
        xaxis={"title": {"text": "head"}},
        yaxis={"title": {"text": "layer"}, "autorange": "reversed"},
    )
    return {"data": [trace], "layout": layout}


def heatmap_figure(
    matrix: np.ndarray, metric: str, log: bool = False, selected: tuple[int, int] | None = None
) -> dict:
    """Layer × head heatmap of one metric, ``matrix``: ``float [layers, heads]`` (NaN = missing).

    With ``log`` the colour is ``log10(value)``; hover always shows the raw value.
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"matrix: must be 2-D [layers, heads], got shape {m.shape}")
    trace = {
        "type": "heatmap",
        "z": _nan_to_none(log_values(m) if log else m),
        "customdata": _nan_to_none(m),
        "colorscale": "Viridis",
        "colorbar": {"title": {"text": "log10" if log else ""}, "thickness": 12},
        "hovertemplate": "layer %{y}, head %{x}<br>" + metric + " = %{customdata:.4g}<extra></extra>",
    }
    return _head_figure(trace, label(metric) + (" (log)" if log else ""), selected)


def difference_figure(
    a: np.ndarray, b: np.ndarray, metric: str, log: bool = False, selected: tuple[int, int] | None = None
) -> dict:
    """Heatmap of ``b - a`` (or ``log10 b - log10 a`` with ``log``), diverging around zero.

    ``a``, ``b``: ``float [layers, heads]`` of the same shape.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"shape: the two sides differ ({a.shape} vs {b.shape}); compare runs of one model")
    diff = (log_values(b) - log_values(a)) if log else (b - a)
    finite = diff[np.isfinite(diff)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    trace = {
        "type": "heatmap",
        "z": _nan_to_none(diff),
        "colorscale": DIVERGING,
        "zmid": 0.0,
        "zmin": -bound,
        "zmax": bound,
        "colorbar": {"thickness": 12},
        "hovertemplate": "layer %{y}, head %{x}<br>Δ = %{z:.4g}<extra></extra>",
    }
    return _head_figure(trace, f"B − A: {label(metric)}" + (" (log10 ratio)" if log else ""), selected)


def a2_figure(weights: Sequence[float], title: str) -> dict:
    """A² weight per token position of one KV head (``weights``: ``[window]``), log y axis."""
    trace = {
        "type": "scatter",
        "mode": "lines",
        "name": "A²",
        "x": list(range(len(weights))),
        "y": list(weights),
        "hovertemplate": "position %{x}: %{y:.4g}<extra></extra>",
    }
    return {
        "data": [trace],
        "layout": _layout(
            title,
            300,
            xaxis={"title": {"text": "token position"}},
            yaxis={"title": {"text": "A² weight"}, "type": "log"},
        ),
    }


def spectrum_figure(eigenvalues: Sequence[float], rank: int | None, title: str) -> dict:
    """Query eigenvalue spectrum (``[head_dim]``, descending) with the HeadQ rank marked."""
    trace = {
        "type": "scatter",
        "mode": "lines+markers",
        "name": "eigenvalue",
        "x": list(range(1, len(eigenvalues) + 1)),
        "y": list(eigenvalues),
        "hovertemplate": "#%{x}: %{y:.4g}<extra></extra>",
    }
    shapes, notes = [], []
    if rank is not None:
        shapes = [
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": rank + 0.5,
                "x1": rank + 0.5,
                "y0": 0,
                "y1": 1,
                "line": {"color": "red", "dash": "dash"},
            }
        ]
        notes = [
            {
                "text": f"rank {rank}",
                "xref": "x",
                "yref": "paper",
                "x": rank + 0.5,
                "y": 1,
                "xanchor": "left",
                "showarrow": False,
            }
        ]
    layout = _layout(
        title,
        300,
        shapes=shapes,
        annotations=notes,
        xaxis={"title": {"text": "eigenvector index"}},
        yaxis={"title": {"text": "eigenvalue"}, "type": "log"},
    )
    return {"data": [trace], "layout": layout}


def head_runs_figure(across: Mapping[str, Mapping[str, float]], metrics: Sequence[str], title: str) -> dict:
    """One head's metrics across configurations: one bar trace per metric, runs on x, log y."""
    runs = list(across)
    data = [{"type": "bar", "name": m, "x": runs, "y": [across[r].get(m) for r in runs]} for m in metrics]
    layout = _layout(
        title, 300, barmode="group", legend={"orientation": "h", "y": -0.3}, yaxis={"type": "log"}
    )
    return {"data": data, "layout": layout}


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
    layout = _layout(
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
        "layout": _layout("perplexity per configuration", 400, yaxis={"title": {"text": "perplexity"}}),
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
        "layout": _layout(
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
    layout = _layout(
        "excess perplexity against effective key bits",
        400,
        xaxis={"title": {"text": "effective key bits"}},
        yaxis={"title": {"text": "excess perplexity"}},
    )
    return {"data": data, "layout": layout}


def empty_figure(message: str) -> dict:
    """A blank figure carrying a visible message (the empty state of a panel)."""
    return {
        "data": [],
        "layout": _layout(
            "",
            300,
            annotations=[{"text": message, "showarrow": False, "font": {"size": 14}}],
            xaxis={"visible": False},
            yaxis={"visible": False},
        ),
    }
