"""Pure views of a results document (docs/contracts.md): matrices, rows and points for figures.

No I/O and no Dash here; every function takes the parsed JSON document and returns plain Python or
numpy values, so tests can check each against a direct computation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeGuard

import numpy as np

from app.dashboard.stats import paired_difference
from headq_spec.uncertainty import windows_for_half_width

KEY_FIELDS = ("run", "layer", "head", "kv_head")
PREDICTORS = ("fisher", "key_mse")  # what the Predictor page ranks attn_kl against
MAIN_METRICS = ("fisher", "attn_kl", "key_mse", "value_a2")
METRIC_LABELS = {
    "fisher": "score-space error (fisher)",
    "attn_kl": "attention KL (attn_kl)",
    "key_mse": "key MSE (key_mse)",
    "value_a2": "value A² distortion (value_a2)",
    "score_mse": "score MSE",
    "entropy": "attention entropy",
    "route_flip": "route flip rate",
    "value_mse": "value MSE",
    "readout_err": "readout error",
}
METRIC_UNITS = {  # colour-bar units (docs/method.md, "Per-head metrics")
    "fisher": "nats",
    "attn_kl": "nats",
    "entropy": "nats",
    "key_mse": "key², per dim",
    "score_mse": "logit²",
    "route_flip": "share of queries",
    "value_mse": "value², per dim",
    "value_a2": "value², per query",
    "readout_err": "value²",
}


def run_names(doc: dict) -> list[str]:
    """Configuration names in document order."""
    return [r["name"] for r in doc.get("runs", [])]


def is_dense(row: Mapping[str, Any]) -> bool:
    """A run row whose spec quantizes neither side."""
    spec = row.get("spec") or {}
    return spec.get("key") is None and spec.get("value") is None


def default_run(doc: dict) -> str | None:
    """The first quantized configuration (the dense reference has nothing to show), else the first."""
    runs = doc.get("runs", [])
    return next((r["name"] for r in runs if not is_dense(r)), runs[0]["name"] if runs else None)


def metric_names(doc: dict) -> list[str]:
    """Every per-head metric with a number in ``doc['heads']``, main metrics first, then alphabetical."""
    heads = doc.get("heads", [])
    keys = set().union(*(row.keys() for row in heads)) - set(KEY_FIELDS)
    seen = {k for k in keys if any(_is_number(row.get(k)) for row in heads)}
    return [m for m in MAIN_METRICS if m in seen] + sorted(seen - set(MAIN_METRICS))


SIDE_METRICS = {"key": ("key_mse", "score_mse", "fisher", "attn_kl", "route_flip"),
                "value": ("value_mse", "value_a2", "readout_err")}


def dense_side_note(doc: dict, run: str, metric: str) -> str | None:
    """Why ``metric`` carries no information for ``run`` (its keys or values are not quantized),
    or None. A run quantizing nothing on that side has all-zero errors there by definition."""
    spec = next((r.get("spec") or {} for r in doc.get("runs", []) if r.get("name") == run), {})
    for side, metrics in SIDE_METRICS.items():
        if metric in metrics and spec.get(side) is None and spec.get("intervention") is None:
            return f"{METRIC_LABELS.get(metric, metric)}: {side}s are not quantized in {run}"
    return None


def model_shape(doc: dict) -> tuple[int, int]:
    """``(layers, query heads)`` of the evaluated model."""
    model = doc.get("model") or {}
    layers, heads = model.get("layers"), model.get("heads")
    if not isinstance(layers, int) or not isinstance(heads, int) or layers < 1 or heads < 1:
        raise ValueError("model: the results document needs positive integer 'layers' and 'heads'")
    return layers, heads


def head_matrix(doc: dict, run: str, metric: str) -> np.ndarray:
    """``float64 [layers, heads]`` of one metric for one run; NaN where a head has no value."""
    layers, heads = model_shape(doc)
    if run not in run_names(doc):
        raise ValueError(f"run: {run!r} is not a configuration of this job")
    out = np.full((layers, heads), np.nan)
    for row in doc.get("heads", []):
        if row.get("run") == run and _is_number(row.get(metric)):
            layer, head = row["layer"], row["head"]
            if 0 <= layer < layers and 0 <= head < heads:
                out[layer, head] = float(row[metric])
    return out


def kv_head_of(doc: dict, head: int) -> int:
    """KV head read by query ``head`` (``head // (heads // kv_heads)``, the repeat_kv order)."""
    model = doc["model"]
    kv = model.get("kv_heads") or model["heads"]
    return head // (model["heads"] // kv)


def head_across_runs(doc: dict, layer: int, head: int) -> dict[str, dict[str, float]]:
    """``{run: {metric: value}}`` for one query head across every configuration; a dense run (no
    head rows: it reads the exact cache) at 0 for every metric, as the reference bar."""
    out: dict[str, dict[str, float]] = {}
    for row in doc.get("heads", []):
        if row.get("layer") == layer and row.get("head") == head:
            out[row["run"]] = {k: float(v) for k, v in row.items() if k not in KEY_FIELDS and _is_number(v)}
    metrics = {m for values in out.values() for m in values}
    for run in doc.get("runs", []):
        if run["name"] not in out and is_dense(run) and metrics:
            out[run["name"]] = dict.fromkeys(sorted(metrics), 0.0)
    return {r: out[r] for r in run_names(doc) if r in out}


def a2_weights(doc: dict, run: str, layer: int, kv_head: int) -> list[float] | None:
    """A² weight per window position for one KV head, or None when the job did not store it."""
    return _per_position(doc, "a2_weights", run, layer, kv_head)


def a2_keep_rate(doc: dict, run: str, layer: int, kv_head: int) -> list[float] | None:
    """Share of windows in which ``run``'s A² value policy kept each window position of one KV head,
    or None (no policy, or a document from before the evaluator stored it)."""
    return _per_position(doc, "a2_keep_rate", run, layer, kv_head)


def _per_position(doc: dict, array: str, run: str, layer: int, kv_head: int) -> list[float] | None:
    table = ((doc.get("arrays") or {}).get(array) or {}).get(run)
    try:
        return list(table[layer][kv_head]) if table is not None else None
    except (IndexError, TypeError):
        return None


def query_spectrum(doc: dict, layer: int, kv_head: int) -> list[float] | None:
    """Descending eigenvalues of the query second moment of one KV head group, or None."""
    table = (doc.get("arrays") or {}).get("query_spectrum")
    try:
        return list(table[layer][kv_head]) if table is not None else None
    except (IndexError, TypeError):
        return None


def run_rank(doc: dict, run: str) -> int | None:
    """The HeadQ rank of a run (None when the run has no HeadQ correction)."""
    for r in doc.get("runs", []):
        if r["name"] == run:
            return ((r.get("spec") or {}).get("headq") or {}).get("rank")
    return None


def _pair(ci: Any) -> list[float] | None:
    """``[lo, hi]`` when ``ci`` is two finite numbers, else None."""
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_is_number(v) for v in ci):
        return [float(ci[0]), float(ci[1])]
    return None


def interval(run: dict, name: str) -> list[float] | None:
    """``[lo, hi]`` of a run row's ``<name>_ci``, or None (an older document, or no interval)."""
    return _pair(run.get(f"{name}_ci"))


def perplexity_rows(doc: dict) -> list[dict[str, Any]]:
    """One row per configuration: perplexity, excess, share of excess removed (each with its
    ``*_ci`` interval or None), effective bits."""
    rows = []
    for r in doc.get("runs", []):
        bits = r.get("effective_bits") or {}
        rows.append(
            {
                "run": r["name"],
                "perplexity": r.get("perplexity"),
                "perplexity_ci": interval(r, "perplexity"),
                "excess": r.get("excess_perplexity"),
                "excess_ci": interval(r, "excess_perplexity"),
                "excess_removed": r.get("excess_removed"),
                "excess_removed_ci": interval(r, "excess_removed"),
                "key_bits": bits.get("key"),
                "value_bits": bits.get("value"),
                "tokens": r.get("tokens"),
            }
        )
    return rows


def uncertainty_line(doc: dict) -> str | None:
    """How the document's intervals were computed, in words; None when no run has one."""
    if not any(interval(r, "perplexity") for r in doc.get("runs", [])):
        return None
    note, dataset = doc.get("uncertainty") or {}, doc.get("dataset") or {}
    confidence = note.get("confidence", 0.95)
    windows, scored = dataset.get("windows"), dataset.get("tokens_scored")
    over = f" over {windows} windows" if windows else ""
    tokens = f" ({scored:,} tokens scored)" if scored else ""
    return f"{confidence:.0%} intervals: paired bootstrap{over}{tokens}.{windows_needed(doc)}"


def windows_needed(doc: dict, half_width: float = 0.05) -> str:
    """`` For a share-removed interval of ±5 points: about N windows (...)`` from the first run
    with a share-removed SE (the SE shrinks as 1/sqrt(windows): N = n (1.96 SE / half_width)^2);
    empty when no run has one."""
    windows = (doc.get("dataset") or {}).get("windows")
    run = next((r for r in doc.get("runs", []) if r.get("excess_removed_se")), None)
    if not windows or run is None:
        return ""
    needed = windows_for_half_width(run["excess_removed_se"], windows, half_width)
    return (f" For a share-removed interval of ±{half_width * 100:g} percentage points: "
            f"about {needed:,} windows "
            f"(from {run['name']}'s standard error at {windows} windows).")


def _run_row(doc: dict, run: str) -> dict[str, Any]:
    return next((r for r in doc.get("runs", []) if r.get("name") == run), {})


def window_means(doc: dict, run: str) -> np.ndarray | None:
    """Mean NLL per token of each window of ``run`` (``window_nll / window_tokens``) [n_windows],
    or None when the document has no per-window values."""
    row = _run_row(doc, run)
    sums, tokens = row.get("window_nll"), row.get("window_tokens")
    if not sums or tokens is None:
        return None
    return np.asarray(sums, dtype=float) / np.asarray(tokens, dtype=float)


WINDOW_KEYS = ("name", "split", "files", "window", "window_offsets", "tokens_scored", "prefix_tokens",
               "stream_tokens")


def same_windows(doc_a: dict, doc_b: dict) -> bool:
    """Whether two documents scored the same windows: both list ``dataset.window_offsets`` and
    agree on them, the window size and the corpus (``WINDOW_KEYS``)."""
    a, b = doc_a.get("dataset") or {}, doc_b.get("dataset") or {}
    return bool(a.get("window_offsets")) and all(a.get(k) == b.get(k) for k in WINDOW_KEYS)


def perplexity_difference(doc_a: dict, run_a: str, doc_b: dict, run_b: str, same_doc: bool) -> str | None:
    """Perplexity A − B in words, with its paired bootstrap interval (:func:`stats.paired_difference`)
    when both runs were scored on the same windows (``same_doc``, or :func:`same_windows`); None
    when either run has no perplexity."""
    ppl_a, ppl_b = _run_row(doc_a, run_a).get("perplexity"), _run_row(doc_b, run_b).get("perplexity")
    if not (_is_number(ppl_a) and _is_number(ppl_b)):
        return None
    head = f"Perplexity A − B = {ppl_a - ppl_b:.4g}"
    a, b = window_means(doc_a, run_a), window_means(doc_b, run_b)
    if a is None or b is None:
        return head + ": no per-window values (an older document), so no interval."
    if not (same_doc or same_windows(doc_a, doc_b)) or a.shape != b.shape:
        return head + ": the runs were measured on different windows, so no paired comparison is possible."
    diff = paired_difference(a, b)
    text = (f"Perplexity A − B = {diff.value:.4g} [{diff.ci[0]:.4g}, {diff.ci[1]:.4g}] "
            f"(95% interval, paired bootstrap over {a.size} windows)")
    return text + (": not distinguishable on these windows." if diff.contains_zero else ".")


def predictor_points(doc: dict, runs: list[str] | None = None) -> dict[str, np.ndarray]:
    """Per-head ``fisher``, ``key_mse``, ``attn_kl`` (and ``run`` labels) over the chosen runs.

    Keeps heads where all three are finite and positive: the log axes need it, and a dense
    reference (all zero) carries no information about the predictor.
    """
    cols: dict[str, list] = {"fisher": [], "key_mse": [], "attn_kl": [], "run": [], "layer": [], "head": []}
    for row in doc.get("heads", []):
        if runs is not None and row.get("run") not in runs:
            continue
        vals = [row.get(m) for m in ("fisher", "key_mse", "attn_kl")]
        if all(_is_number(v) and v > 0 for v in vals):
            for name, v in zip(("fisher", "key_mse", "attn_kl"), vals, strict=True):
                cols[name].append(float(v))
            for name in ("run", "layer", "head"):
                cols[name].append(row[name])
    return {k: np.asarray(v) for k, v in cols.items()}


def _is_number(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def rank_correlations(points: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Spearman rho of ``attn_kl`` against ``fisher`` and against ``key_mse`` (None if < 3 points)."""
    from scipy.stats import spearmanr

    out: dict[str, float | None] = {}
    for predictor in PREDICTORS:
        x, y = points[predictor], points["attn_kl"]
        out[predictor] = float(spearmanr(x, y).statistic) if len(x) >= 3 else None
    return out


def window_correlations(doc: dict, runs: list[str]) -> dict[str, list[float]] | None:
    """The evaluator's interval of rho over windows per predictor, for exactly ``runs``: one run's
    own block, or the pooled block when ``runs`` are the document's pooled runs; None otherwise
    (an older document, or another selection)."""
    pooled = doc.get("rank_correlations") or {}
    if len(runs) == 1:
        block = _run_row(doc, runs[0]).get("rank_correlations")
    else:
        block = pooled if runs and sorted(runs) == sorted(pooled.get("runs") or []) else None
    if not isinstance(block, dict):
        return None
    out = {m: ci for m in PREDICTORS if (ci := _pair((block.get(m) or {}).get("ci"))) is not None}
    return out if len(out) == len(PREDICTORS) else None


def correlation_rows(doc: dict) -> list[dict[str, Any]]:
    """One row per configuration with the evaluator's rho: heads, rho and its interval per predictor."""
    rows = []
    for r in doc.get("runs", []):
        block = r.get("rank_correlations")
        if not isinstance(block, dict):
            continue
        row: dict[str, Any] = {"run": r["name"], "heads": (block.get(PREDICTORS[0]) or {}).get("heads")}
        for m in PREDICTORS:
            entry = block.get(m) or {}
            row[m] = entry.get("rho") if _is_number(entry.get("rho")) else None
            row[f"{m}_ci"] = _pair(entry.get("ci"))
        rows.append(row)
    return rows


def budget_split(doc: dict) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Quantized configurations as budget rows ``{run, kind, key_bits, mean_bits, excess,
    excess_ci}``, split into those quantizing keys only and those quantizing keys and values
    (``mean_bits``: the mean of the effective key and value bits). ``kind``: ``other`` for an
    intervention, else ``HeadQ`` or ``plain``."""
    split: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    for r in doc.get("runs", []):
        spec, bits = r.get("spec") or {}, r.get("effective_bits") or {}
        if not spec.get("key") and not spec.get("value"):
            continue
        kind = "other" if spec.get("intervention") else "HeadQ" if spec.get("headq") else "plain"
        key, value = bits.get("key"), bits.get("value")
        split[1 if spec.get("value") else 0].append(
            {"run": r["name"], "kind": kind, "key_bits": key,
             "mean_bits": None if key is None or value is None else (key + value) / 2,
             "excess": r.get("excess_perplexity"), "excess_ci": interval(r, "excess_perplexity")})
    return split
