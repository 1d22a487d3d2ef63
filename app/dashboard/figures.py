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


def base_layout(title: str, height: int, **extra) -> dict:
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
    layout = base_layout(
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
        "layout": base_layout(
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
    """One head's metrics across configurations: one bar trace per metric, runs on x, log y."""
    runs = list(across)
    data = [{"type": "bar", "name": m, "x": runs, "y": [across[r].get(m) for r in runs]} for m in metrics]
    layout = base_layout(
        title, 300, barmode="group", legend={"orientation": "h", "y": -0.3}, yaxis={"type": "log"}
    )
    return {"data": data, "layout": layout}


def empty_figure(message: str) -> dict:
    """A blank figure carrying a visible message (the empty state of a panel)."""
    return {
        "data": [],
        "layout": base_layout(
            "",
            300,
            annotations=[{"text": message, "showarrow": False, "font": {"size": 14}}],
            xaxis={"visible": False},
            yaxis={"visible": False},
        ),
    }
