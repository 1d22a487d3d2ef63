"""Pure views for the Run page: the selected run's headline numbers, what the per-head metrics
cover, the A² policy's kept tokens and a colour range shared by several heatmaps.

No I/O and no Dash here (like :mod:`app.dashboard.results`), so tests check each against a direct
computation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.dashboard.results import perplexity_rows


def _num(value: float, ci: list[float] | None, fmt: str) -> str:
    text = format(value, fmt)
    return text + (f" [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else "")


def run_summary(doc: dict, run: str) -> list[str]:
    """Headline numbers of ``run`` in words: perplexity, excess, share removed (each with its 95%
    interval when the run row has ``*_ci``) and effective key / value bits; [] for an unknown run."""
    row = next((r for r in perplexity_rows(doc) if r["run"] == run), None)
    if row is None:
        return []
    parts = []
    if row["perplexity"] is not None:
        parts.append("perplexity " + _num(row["perplexity"], row["perplexity_ci"], ".4g"))
    if row["excess"] is not None:
        parts.append("excess " + _num(row["excess"], row["excess_ci"], ".3g"))
    if row["excess_removed"] is not None:
        parts.append("share removed " + _num(row["excess_removed"], row["excess_removed_ci"], ".1%"))
    if row["key_bits"] is not None or row["value_bits"] is not None:
        key, value = (("–" if b is None else format(b, ".3g")) for b in (row["key_bits"], row["value_bits"]))
        parts.append(f"effective bits K {key} / V {value}")
    return parts


def coverage_line(doc: dict) -> str | None:
    """Which windows and how many tokens the per-head metrics cover (the ``dataset`` block), in
    words; None without a window count."""
    data = doc.get("dataset") or {}
    windows, window = data.get("windows"), data.get("window")
    if not windows:
        return None
    heads = min(data.get("head_windows") or windows, windows)
    size = f" of {window:,} tokens" if window else ""
    which = "all" if heads == windows else f"the first {heads:,} of"
    text = f"Per-head metrics: {which} {windows:,} windows{size}"
    if window:
        text += f" (about {heads * window:,} tokens)"
    text += "."
    if data.get("tokens_scored"):
        text += f" Perplexity: {data['tokens_scored']:,} tokens scored over {windows:,} windows"
        text += f", placed {data['placement']}." if data.get("placement") else "."
    return text


def kept_fraction(doc: dict, run: str) -> float | None:
    """Share of tokens ``run``'s A² value policy keeps at high precision (``keep_fraction``, or
    the one ``target_bits`` implies: ``(target - value bits) / (high_bits - value bits)``); None
    without a policy."""
    spec = next((r.get("spec") or {} for r in doc.get("runs", []) if r.get("name") == run), {})
    policy, value = spec.get("value_policy"), spec.get("value") or {}
    if not policy:
        return None
    if policy.get("keep_fraction") is not None:
        return float(policy["keep_fraction"])
    low, high, target = value.get("bits"), policy.get("high_bits", 8), policy.get("target_bits")
    return None if low is None or target is None or high == low else (target - low) / (high - low)


def a2_ranked(weights: Sequence[float], fraction: float | None) -> dict:
    """Positions ranked by A² weight (largest first) for one KV head, ``weights``: ``[window]``.

    Returns ``order`` (positions, ranked), ``cumulative`` (share of the total weight held by the
    top 1..n), ``kept`` (the ``round(fraction * n)`` top positions, sorted; the policy's choice on
    this profile, exactly the oracle rule) and ``kept_weight`` (their share of the weight).
    """
    w = np.asarray(weights, dtype=float)
    order = np.argsort(-w, kind="stable")
    total = float(w.sum())
    cumulative = np.cumsum(w[order]) / total if total > 0 else np.zeros(w.size)
    k = int(round(fraction * w.size)) if fraction is not None else 0
    return {
        "order": order.tolist(),
        "cumulative": cumulative.tolist(),
        "kept": sorted(order[:k].tolist()),
        "kept_weight": float(cumulative[k - 1]) if k else 0.0,
    }


def shared_range(matrices: Sequence[np.ndarray], log: bool = False) -> tuple[float, float] | None:
    """``(min, max)`` over the finite values of every matrix (of ``log10`` of the positive ones
    with ``log``), for one colour scale across panels; None when nothing is finite."""
    values = []
    for m in matrices:
        a = np.asarray(m, dtype=float).ravel()
        a = np.log10(a[a > 0]) if log else a
        values.append(a[np.isfinite(a)])
    finite = np.concatenate(values) if values else np.array([])
    return (float(finite.min()), float(finite.max())) if finite.size else None
