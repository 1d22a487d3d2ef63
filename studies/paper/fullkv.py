"""e. Full-KV runs (keys and values quantized): the Pareto frontier over mean bits vs perplexity,
and each method (HeadQ and/or a value policy) against the plain quantizers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from studies.paper.frontier import pareto_rows
from studies.paper.records import TIE, Record, quantized


def fullkv_rows(records: Sequence[Record], job: str = "exp4-fullkv") -> list[dict[str, Any]]:
    """Every run of a full-KV job: perplexity, excess, key / value / mean bits, and its group
    (``method``: HeadQ or a value policy; ``rival``: plain quantizers; ``dense``)."""
    rows = []
    for r in records:
        if r["job"] != job:
            continue
        spec = r["spec"]
        group = (
            "method"
            if spec.get("headq") or spec.get("value_policy")
            else "rival"
            if quantized(spec)
            else "dense"
        )
        mean = (r["key_bits"] + r["value_bits"]) / 2 if None not in (r["key_bits"], r["value_bits"]) else None
        rows.append(
            {
                "run": r["name"],
                "group": group,
                "perplexity": r["perplexity"],
                "excess": r["excess"],
                "key_bits": r["key_bits"],
                "value_bits": r["value_bits"],
                "mean_bits": mean,
            }
        )
    return rows


def fullkv_front(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Quantized runs on the Pareto frontier of (mean bits, perplexity), by mean bits."""
    scored = [r for r in rows if r["group"] != "dense" and None not in (r["mean_bits"], r["perplexity"])]
    return [r["run"] for r in pareto_rows(scored, "mean_bits", "perplexity")]


def method_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: its mean bits and perplexity, ``best_rival`` (the plain run of lowest perplexity
    at <= its mean bits) and ``cheapest_match`` (the plain run of fewest mean bits with perplexity
    <= its own; lower perplexity breaks ties), each ``{run, mean_bits, perplexity}`` or None."""
    rivals = [r for r in rows if r["group"] == "rival" and None not in (r["mean_bits"], r["perplexity"])]
    out = []
    for m in (r for r in rows if r["group"] == "method" and None not in (r["mean_bits"], r["perplexity"])):
        cheaper = [v for v in rivals if v["mean_bits"] <= m["mean_bits"] + TIE]
        matching = [v for v in rivals if v["perplexity"] <= m["perplexity"]]
        best = min(cheaper, key=lambda v: (v["perplexity"], v["mean_bits"]), default=None)
        match = min(matching, key=lambda v: (v["mean_bits"], v["perplexity"]), default=None)
        out.append(
            {
                "run": m["run"],
                "mean_bits": m["mean_bits"],
                "perplexity": m["perplexity"],
                "best_rival": _brief(best),
                "cheapest_match": _brief(match),
            }
        )
    return out


def _brief(r: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if r is None else {k: r[k] for k in ("run", "mean_bits", "perplexity")}
