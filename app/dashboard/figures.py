"""Figures of the dashboard, built by pure functions: numbers in, a plotly figure dict out.

Figures are plain ``{"data": [...], "layout": {...}}`` dicts (what ``dcc.Graph`` takes), which
skips plotly's per-property validation (about 75 ms a heatmap here). Heatmaps are
``[layers, heads]`` matrices drawn as ONE heatmap trace per metric (never a trace per head); a
selected head is marked by a layout shape so every panel can show it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np

from app.dashboard.results import METRIC_LABELS, METRIC_UNITS
from app.dashboard.run_views import a2_ranked

_MARGIN = {"l": 50, "r": 10, "t": 40, "b": 40}
DIVERGING = [[0.0, "#2166ac"], [0.5, "#f7f7f7"], [1.0, "#b2182b"]]  # blue: B lower, red: B higher


def label(metric: str) -> str:
    """Human name of a metric (the metric id when unknown)."""
    return METRIC_LABELS.get(metric, metric)


def unit(metric: str, log: bool = False) -> str:
    """Colour-bar title of a metric: its unit (``log10(unit)`` with ``log``), empty when unknown."""
    text = METRIC_UNITS.get(metric, "")
    return f"log10({text or 'value'})" if log else text


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


def base_layout(title: str, height: int, **extra) -> dict:
    return {"title": {"text": title, "font": {"size": 13}}, "margin": _MARGIN, "height": height, **extra}


def selection_shapes(selected: tuple[int, int] | None, shape: tuple[int, int] | None = None) -> list[dict]:
    """Red outline around the selected ``(layer, head)`` cell; empty for none, or for a cell
    outside ``shape`` ``(layers, heads)`` (an outline there would stretch the axes)."""
    if selected is None:
        return []
    layer, head = selected
    if shape is not None and not (0 <= layer < shape[0] and 0 <= head < shape[1]):
        return []
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


def _head_figure(trace: dict, title: str, selected: tuple[int, int] | None, shape: tuple[int, int]) -> dict:
    ticks = {"tickmode": "linear", "tick0": 0, "dtick": 1}  # every layer and head ticked
    layout = base_layout(
        title,
        360,
        shapes=selection_shapes(selected, shape),
        xaxis={"title": {"text": "head"}, **ticks},
        yaxis={"title": {"text": "layer"}, "autorange": "reversed", **ticks},
    )
    return {"data": [trace], "layout": layout}


def heatmap_figure(
    matrix: np.ndarray,
    metric: str,
    log: bool = False,
    selected: tuple[int, int] | None = None,
    hover: Mapping[str, np.ndarray] | None = None,
    zrange: tuple[float, float] | None = None,
) -> dict:
    """Layer × head heatmap of one metric, ``matrix``: ``float [layers, heads]`` (NaN = missing).

    With ``log`` the colour is ``log10(value)``. ``customdata[l][h]`` is the raw value then each of
    ``hover``'s matrices (e.g. the four main metrics), all shown on hover. ``zrange``: a colour
    range shared with other panels (in colour units), else the panel's own.
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"matrix: must be 2-D [layers, heads], got shape {m.shape}")
    extra = dict(hover or {})
    layers = np.stack([m, *(np.asarray(v, dtype=float) for v in extra.values())], axis=-1)
    lines = [f"{metric} = %{{customdata[0]:.4g}}"] + [
        f"{name} = %{{customdata[{i}]:.4g}}" for i, name in enumerate(extra, start=1)
    ]
    trace: dict = {
        "type": "heatmap",
        "z": _nan_to_none(log_values(m) if log else m),
        "customdata": _nan_to_none(layers),
        "colorscale": "Viridis",
        "colorbar": {"title": {"text": unit(metric, log)}, "thickness": 12},
        "hovertemplate": "layer %{y}, head %{x}<br>" + "<br>".join(lines) + "<extra></extra>",
    }
    if zrange is not None:
        trace["zmin"], trace["zmax"] = zrange
    return _head_figure(trace, label(metric) + (" (log)" if log else ""), selected, m.shape)


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
        "colorbar": {"title": {"text": "log10 B/A" if log else f"Δ {unit(metric)}"}, "thickness": 12},
        "hovertemplate": "layer %{y}, head %{x}<br>Δ = %{z:.4g}<extra></extra>",
    }
    title = f"B − A: {label(metric)}" + (" (log10 ratio)" if log else "")
    return _head_figure(trace, title, selected, a.shape)


def a2_figure(weights: Sequence[float], title: str, fraction: float | None = None,
              keep_rate: Sequence[float] | None = None) -> dict:
    """A² weight of one KV head (``weights``: ``[window]``) in two panels: by token position (log y)
    with the policy's kept tokens marked, and the cumulative share of the weight over tokens ranked by
    weight, readable at any window. ``keep_rate`` (``[window]``, the share of windows in which the
    policy kept each position, as the evaluator stored it) marks the tokens kept in at least half
    of the windows; without it (older documents) the ``fraction`` top-A² positions of this profile
    stand in (:func:`run_views.a2_ranked`, the oracle rule)."""
    ranked = a2_ranked(weights, fraction)
    n = len(weights)
    data = [
        {"type": "scatter", "mode": "lines", "name": "A² weight", "x": list(range(n)), "y": list(weights),
         "hovertemplate": "position %{x}: %{y:.4g}<extra></extra>"},
        {"type": "scatter", "mode": "lines", "name": "cumulative share", "xaxis": "x2", "yaxis": "y2",
         "x": [(i + 1) / n for i in range(n)], "y": ranked["cumulative"],
         "hovertemplate": "top %{x:.1%} of tokens: %{y:.1%} of A²<extra></extra>"},
    ]
    if keep_rate is not None and len(keep_rate) == n:
        kept = [i for i in range(n) if keep_rate[i] >= 0.5]
        total = float(sum(weights))
        share = sum(keep_rate) / n
        held = sum(w * r for w, r in zip(weights, keep_rate, strict=True))
        kept_weight = held / total if total > 0 else 0.0
        marker = {"name": "kept by the policy (≥ half the windows)",
                  "customdata": [keep_rate[i] for i in kept],
                  "hovertemplate": "position %{x}: kept in %{customdata:.0%} of windows<extra></extra>"}
        note = f"kept {share:.0%} of tokens (measured): {kept_weight:.0%} of A²"
    else:
        kept, share, kept_weight = ranked["kept"], len(ranked["kept"]) / n, ranked["kept_weight"]
        marker = {"name": "top A² (policy's share; keep mask not stored)",
                  "hovertemplate": "top A²: position %{x}<extra></extra>"}
        note = f"top {share:.0%} of tokens: {kept_weight:.0%} of A²"
    shapes, notes = [], []
    if kept:
        data.insert(1, {"type": "scatter", "mode": "markers", "x": kept, "y": [weights[i] for i in kept],
                        "marker": {"color": "red", "size": 5}, **marker})
        shapes = [{"type": "rect", "xref": "x2", "yref": "y2", "x0": 0, "x1": share, "y0": 0, "y1": 1,
                   "fillcolor": "red", "opacity": 0.12, "line": {"width": 0}}]
        notes = [{"text": note, "xref": "x2", "yref": "y2", "x": share, "y": 0.05, "xanchor": "left",
                  "showarrow": False}]
    layout = base_layout(
        title,
        320,
        shapes=shapes,
        annotations=notes,
        legend={"orientation": "h", "y": -0.3},
        xaxis={"title": {"text": "token position"}, "domain": [0, 0.55]},
        yaxis={"title": {"text": "A² weight"}, "type": "log"},
        xaxis2={"title": {"text": "share of tokens, largest A² first"}, "domain": [0.68, 1],
                "anchor": "y2", "tickformat": ".0%"},
        yaxis2={"title": {"text": "share of A² weight"}, "anchor": "x2", "range": [0, 1.02],
                "tickformat": ".0%"},
    )
    return {"data": data, "layout": layout}


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
    layout = base_layout(
        title,
        300,
        shapes=shapes,
        annotations=notes,
        xaxis={"title": {"text": "eigenvector index"}},
        yaxis={"title": {"text": "eigenvalue"}, "type": "log"},
    )
    return {"data": [trace], "layout": layout}


def head_runs_figure(across: Mapping[str, Mapping[str, float]], metrics: Sequence[str], title: str) -> dict:
    """One head's metrics across configurations (dense included): one panel per metric, each with
    its own linear x axis titled with the unit; horizontal bars so run names are never cut."""
    runs = list(across)
    gap = 0.04
    width = (1 - gap * (len(metrics) - 1)) / max(len(metrics), 1)
    data, axes = [], {}
    for i, m in enumerate(metrics, start=1):
        suffix = "" if i == 1 else str(i)
        data.append({"type": "bar", "orientation": "h", "name": m, "x": [across[r].get(m) for r in runs],
                     "y": runs, "xaxis": f"x{suffix}", "showlegend": False,
                     "hovertemplate": "%{y}: %{x:.4g}<extra>" + m + "</extra>"})
        start = (i - 1) * (width + gap)
        name = f"{m} ({unit(m)})" if unit(m) else m
        axes[f"xaxis{suffix}"] = {"domain": [start, start + width], "anchor": "y", "exponentformat": "e",
                                  "title": {"text": name, "font": {"size": 11}}}
    layout = base_layout(
        title,
        90 + 24 * len(runs),
        yaxis={"title": {"text": "configuration"}, "autorange": "reversed", "automargin": True},
        **axes,
    )
    return {"data": data, "layout": layout}


def empty_figure(message: str) -> dict:
    """A blank figure carrying a visible message (the empty state of a panel), wrapped to fit a
    narrow panel."""
    return {
        "data": [],
        "layout": base_layout(
            "",
            300,
            annotations=[{"text": "<br>".join(textwrap.wrap(message, 40)), "showarrow": False,
                          "font": {"size": 14}}],
            xaxis={"visible": False},
            yaxis={"visible": False},
        ),
    }
