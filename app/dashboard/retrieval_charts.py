"""Figures and tables of the Retrieval page, pure functions of a retrieval results document
(docs/contracts.md "Retrieval"): the depth × context-length accuracy heatmap of each run (dense
first), the layer × head heatmap of needle attention lost, and each run's accuracy beside its
effective bits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from app.dashboard.figures import base_layout, empty_figure, selection_shapes
from app.dashboard.results import is_dense


def ordered_runs(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The document's run rows, dense runs first, otherwise in their order."""
    runs = list(doc.get("runs") or [])
    return [r for r in runs if is_dense(r)] + [r for r in runs if not is_dense(r)]


def _bits(row: Mapping[str, Any], side: str) -> float | None:
    value = (row.get("effective_bits") or {}).get(side)
    return None if value is None else float(value)


def run_table(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per run (dense first): accuracy, correct / prompts, effective key and value bits, mean
    needle attention lost and attention KL at the answer's first step."""
    return [{"run": r["name"], "accuracy": r.get("accuracy"), "correct": r.get("correct"),
             "prompts": r.get("prompts"), "key_bits": _bits(r, "key"), "value_bits": _bits(r, "value"),
             "needle_mass_lost": r.get("needle_mass_lost"), "attn_kl": r.get("attn_kl")}
            for r in ordered_runs(doc)]


ACCURACY_COLOURS = [[0.0, "#d73027"], [0.5, "#fee08b"], [1.0, "#1a9850"]]  # red (0%) to green (100%)


def _title(row: Mapping[str, Any]) -> str:
    """``name · accuracy correct`` and, for a quantized run, its effective key / value bits."""
    accuracy, key, value = row.get("accuracy"), _bits(row, "key"), _bits(row, "value")
    parts = [str(row["name"])] + ([f"{accuracy:.0%} correct"] if accuracy is not None else [])
    if not is_dense(row) and key is not None and value is not None:
        parts.append(f"K {key:.2f} b · V {value:.2f} b")
    return " · ".join(parts)


def accuracy_figures(doc: Mapping[str, Any]) -> list[dict]:
    """One heatmap per run (dense first): accuracy [length, depth] from ``retrieval.accuracy``, rows
    the context lengths, columns the needle depths, colour 0–100 % correct, each cell labelled."""
    block = doc.get("retrieval") or {}
    lengths, depths = block.get("lengths") or [], block.get("depths") or []
    out = []
    for row in ordered_runs(doc):
        grid = (block.get("accuracy") or {}).get(row["name"])
        if grid is None:
            out.append(empty_figure(f"{row['name']}: no accuracy stored"))
            continue
        z = (100.0 * np.asarray(grid, dtype=float)).tolist()
        trace = {"type": "heatmap", "z": z, "x": [f"{d:g}%" for d in depths], "y": [str(n) for n in lengths],
                 "zmin": 0, "zmax": 100, "colorscale": ACCURACY_COLOURS,
                 "text": [[f"{v:.0f}%" for v in r] for r in z],
                 "texttemplate": "%{text}", "colorbar": {"title": {"text": "% correct"}, "thickness": 12},
                 "hovertemplate": "%{y} tokens, needle at %{x}<br>%{z:.0f}% correct<extra></extra>"}
        layout = base_layout(_title(row), 320, xaxis={"title": {"text": "needle depth"}, "type": "category"},
                             yaxis={"title": {"text": "context length (tokens)"}, "type": "category"})
        out.append({"data": [trace], "layout": layout})
    return out


def quantized_runs(doc: Mapping[str, Any]) -> list[str]:
    """Names of the runs that have per-head rows (the quantized ones), in the document's order."""
    with_rows = {h.get("run") for h in doc.get("heads") or []}
    return [r["name"] for r in doc.get("runs") or [] if r["name"] in with_rows]


def needle_lost_matrix(doc: Mapping[str, Any], run: str, field: str = "needle_mass_lost") -> np.ndarray:
    """Mean of ``field`` over the prompts, per (layer, head) of ``run``: float [layers, heads] (NaN
    where a head has no row), the model's geometry from the document's ``model`` block."""
    model = doc.get("model") or {}
    rows = [h for h in doc.get("heads") or [] if h.get("run") == run and h.get(field) is not None]
    layers = int(model.get("layers") or 1 + max((h["layer"] for h in rows), default=-1))
    heads = int(model.get("heads") or 1 + max((h["head"] for h in rows), default=-1))
    total, count = np.zeros((layers, heads)), np.zeros((layers, heads))
    for h in rows:
        total[h["layer"], h["head"]] += float(h[field])
        count[h["layer"], h["head"]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def needle_lost_figure(matrix: np.ndarray, run: str, selected: tuple[int, int] | None = None) -> dict:
    """Layer × head heatmap of the needle attention a run loses (dense mass minus quantized mass at
    the answer's first step, mean over prompts): red where the quantized cache looks away."""
    m = np.asarray(matrix, dtype=float)
    if m.size == 0 or not np.isfinite(m).any():
        return empty_figure(f"{run}: no per-head needle attention stored")
    limit = float(np.nanmax(np.abs(m))) or 1.0
    z = [[float(v) if np.isfinite(v) else None for v in row] for row in m]
    # plotly.js's RdBu runs from blue (attention gained) to red (attention lost)
    trace = {"type": "heatmap", "z": z, "zmin": -limit, "zmax": limit, "colorscale": "RdBu",
             "colorbar": {"title": {"text": "mass lost"}, "thickness": 12},
             "hovertemplate": "layer %{y}, head %{x}<br>needle attention lost %{z:.4f}<extra></extra>"}
    ticks = {"tickmode": "linear", "tick0": 0, "dtick": 1}
    layout = base_layout(f"{run}: needle attention lost at the answer's first step (dense − quantized)", 420,
                         shapes=selection_shapes(selected, m.shape),
                         xaxis={"title": {"text": "head"}, **ticks},
                         yaxis={"title": {"text": "layer"}, "autorange": "reversed", **ticks})
    return {"data": [trace], "layout": layout}


def top_heads(matrix: np.ndarray, count: int = 5) -> list[tuple[int, int, float]]:
    """The ``count`` (layer, head, mass lost) with the most needle attention lost, largest first."""
    m = np.nan_to_num(np.asarray(matrix, dtype=float), nan=-np.inf)
    order = np.argsort(m, axis=None)[::-1][:count]
    return [(int(i // m.shape[1]), int(i % m.shape[1]), float(m.flat[i]))
            for i in order if np.isfinite(m.flat[i])]


def share_in_top(matrix: np.ndarray, count: int = 5) -> float | None:
    """Share of the total positive needle attention lost that the ``count`` worst heads carry."""
    m = np.asarray(matrix, dtype=float)
    positive = np.clip(np.nan_to_num(m, nan=0.0), 0.0, None)
    total = float(positive.sum())
    if total <= 0:
        return None
    return float(np.sort(positive, axis=None)[::-1][:count].sum()) / total


def head_of_click(click: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """(layer, head) of a heatmap click (``clickData``), or None."""
    points: Sequence[Mapping[str, Any]] = (click or {}).get("points") or []
    if not points:
        return None
    return int(points[0]["y"]), int(points[0]["x"])
