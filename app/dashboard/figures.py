"""Figures of the dashboard, built by pure functions (numbers in, ``plotly`` figure out).

Heatmaps are ``[layers, heads]`` matrices drawn as ONE ``go.Heatmap`` trace per metric (never a
trace per head); a selected head is marked by a layout shape so every panel can show it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from app.dashboard.results import METRIC_LABELS

_MARGIN = {"l": 50, "r": 10, "t": 40, "b": 40}


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
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in m]


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


def _head_axes(fig: go.Figure, title: str, selected: tuple[int, int] | None) -> go.Figure:
    fig.update_layout(
        title={"text": title, "font": {"size": 13}},
        margin=_MARGIN,
        shapes=selection_shapes(selected),
        height=360,
    )
    fig.update_xaxes(title_text="head")
    fig.update_yaxes(title_text="layer", autorange="reversed")
    return fig


def heatmap_figure(
    matrix: np.ndarray, metric: str, log: bool = False, selected: tuple[int, int] | None = None
) -> go.Figure:
    """Layer × head heatmap of one metric, ``matrix``: ``float [layers, heads]`` (NaN = missing).

    With ``log`` the colour is ``log10(value)``; hover always shows the raw value.
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"matrix: must be 2-D [layers, heads], got shape {m.shape}")
    z = log_values(m) if log else m
    trace = go.Heatmap(
        z=_nan_to_none(z),
        customdata=_nan_to_none(m),
        colorscale="Viridis",
        colorbar={"title": {"text": "log10" if log else ""}, "thickness": 12},
        hovertemplate="layer %{y}, head %{x}<br>" + metric + " = %{customdata:.4g}<extra></extra>",
        xgap=1,
        ygap=1,
    )
    return _head_axes(go.Figure(trace), label(metric) + (" (log)" if log else ""), selected)


def difference_figure(
    a: np.ndarray, b: np.ndarray, metric: str, log: bool = False, selected: tuple[int, int] | None = None
) -> go.Figure:
    """Heatmap of ``b - a`` (or ``log10 b - log10 a`` with ``log``), diverging around zero.

    ``a``, ``b``: ``float [layers, heads]`` of the same shape.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"shape: the two sides differ ({a.shape} vs {b.shape}); compare runs of one model")
    diff = (log_values(b) - log_values(a)) if log else (b - a)
    finite = diff[np.isfinite(diff)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    trace = go.Heatmap(
        z=_nan_to_none(diff),
        colorscale="RdBu_r",
        zmid=0.0,
        zmin=-bound,
        zmax=bound,
        colorbar={"thickness": 12},
        hovertemplate="layer %{y}, head %{x}<br>Δ = %{z:.4g}<extra></extra>",
        xgap=1,
        ygap=1,
    )
    title = f"B − A: {label(metric)}" + (" (log10 ratio)" if log else "")
    return _head_axes(go.Figure(trace), title, selected)


def a2_figure(weights: Sequence[float], title: str) -> go.Figure:
    """A² weight per token position of one KV head (``weights``: ``[window]``), log y axis."""
    fig = go.Figure(
        go.Scatter(
            x=list(range(len(weights))),
            y=list(weights),
            mode="lines",
            name="A²",
            hovertemplate="position %{x}: %{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(title={"text": title, "font": {"size": 13}}, margin=_MARGIN, height=300)
    fig.update_xaxes(title_text="token position")
    fig.update_yaxes(title_text="A² weight", type="log")
    return fig


def spectrum_figure(eigenvalues: Sequence[float], rank: int | None, title: str) -> go.Figure:
    """Query eigenvalue spectrum (``[head_dim]``, descending) with the HeadQ rank marked."""
    idx = list(range(1, len(eigenvalues) + 1))
    fig = go.Figure(
        go.Scatter(
            x=idx,
            y=list(eigenvalues),
            mode="lines+markers",
            name="eigenvalue",
            hovertemplate="#%{x}: %{y:.4g}<extra></extra>",
        )
    )
    if rank is not None:
        fig.add_vline(
            x=rank + 0.5,
            line={"color": "red", "dash": "dash"},
            annotation_text=f"rank {rank}",
            annotation_position="top right",
        )
    fig.update_layout(title={"text": title, "font": {"size": 13}}, margin=_MARGIN, height=300)
    fig.update_xaxes(title_text="eigenvector index")
    fig.update_yaxes(title_text="eigenvalue", type="log")
    return fig


def head_runs_figure(
    across: Mapping[str, Mapping[str, float]], metrics: Sequence[str], title: str
) -> go.Figure:
    """One head's metrics across configurations: one bar trace per metric, runs on x, log y."""
    runs = list(across)
    fig = go.Figure([go.Bar(name=m, x=runs, y=[across[r].get(m) for r in runs]) for m in metrics])
    fig.update_layout(
        title={"text": title, "font": {"size": 13}},
        barmode="group",
        margin=_MARGIN,
        height=300,
        legend={"orientation": "h", "y": -0.3},
    )
    fig.update_yaxes(type="log")
    return fig


def predictor_figure(
    x: np.ndarray, y: np.ndarray, runs: np.ndarray, x_metric: str, rho: float | None
) -> go.Figure:
    """Scatter of ``attn_kl`` (``y``) against a predictor (``x``) over heads, log-log, one trace."""
    runs = np.asarray(runs)
    names = sorted(set(runs.tolist()))
    colour = [names.index(r) for r in runs.tolist()]
    fig = go.Figure(
        go.Scatter(
            x=np.asarray(x).tolist(),
            y=np.asarray(y).tolist(),
            mode="markers",
            text=runs.tolist(),
            marker={"size": 5, "opacity": 0.6, "color": colour, "colorscale": "Turbo"},
            hovertemplate="%{text}<br>" + x_metric + " %{x:.3g}<br>attn_kl %{y:.3g}<extra></extra>",
        )
    )
    rho_text = "n/a" if rho is None else f"{rho:.3f}"
    fig.update_layout(
        title={"text": f"attn_kl vs {x_metric}: Spearman ρ = {rho_text}", "font": {"size": 13}},
        margin=_MARGIN,
        height=380,
    )
    fig.update_xaxes(title_text=label(x_metric), type="log")
    fig.update_yaxes(title_text=label("attn_kl"), type="log")
    return fig


def perplexity_figure(rows: Sequence[Mapping]) -> go.Figure:
    """Bar chart of perplexity per configuration; hover adds excess and effective bits."""
    runs = [r["run"] for r in rows]
    hover = [
        f"excess {r.get('excess')}<br>removed {r.get('excess_removed')}<br>"
        f"key bits {r.get('key_bits')}, value bits {r.get('value_bits')}"
        for r in rows
    ]
    fig = go.Figure(
        go.Bar(
            x=runs,
            y=[r.get("perplexity") for r in rows],
            text=hover,
            hovertemplate="%{x}: ppl %{y:.3f}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title={"text": "perplexity per configuration", "font": {"size": 13}}, margin=_MARGIN, height=360
    )
    fig.update_yaxes(title_text="perplexity")
    return fig


def empty_figure(message: str) -> go.Figure:
    """A blank figure carrying a visible message (the empty state of a panel)."""
    fig = go.Figure()
    fig.update_layout(
        annotations=[{"text": message, "showarrow": False, "font": {"size": 14}}],
        xaxis={"visible": False},
        yaxis={"visible": False},
        height=300,
        margin=_MARGIN,
    )
    return fig
