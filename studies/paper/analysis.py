"""The report's tables as data: pure functions over run records (:mod:`studies.paper.records`)
for exp1 (a), the exp2 controls (b), same-budget counterexamples (c), the predictor check (d),
entropy (f) and Shakespeare (h)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from studies.paper.records import (
    TIE,
    Record,
    finite,
    head_mean,
    head_sum,
    is_base,
    k_only,
    unique,
    variants,
    wrong_sign,
)
from studies.paper.specs import key_name
from studies.paper.stats import spearman

PREDICTORS = ("fisher", "score_mse", "key_mse")
GOAL_RUN, GOAL_REMOVED = "k2-pc-g32-r0", 0.84  # the goal: HeadQ r16 removes >= 84% here
BASES = ("query_pca", "key_pca", "random")


# ---------------------------------------------------------------- a. exp1 sweep
def exp1_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One row per plain base of the exp1 jobs: dense ppl, excess, key bits, and per HeadQ variant
    (``"r{rank}s{side_bits}"``) the share of excess removed and the effective key bits."""
    exp1 = [r for r in records if r["family"] == "exp1"]
    rows = []
    for base in (r for r in exp1 if is_base(r)):
        k = base["spec"]["key"]
        found = {
            f"r{v['spec']['headq']['rank']}s{v['spec']['headq']['side_bits']}": {
                "removed": v["removed"],
                "key_bits": v["key_bits"],
                "run": v["name"],
            }
            for v in variants(exp1, base)
        }
        rows.append(
            {
                "job": base["job"],
                "base": base["name"],
                "bits": k["bits"],
                "axis": k["axis"],
                "group": k["group_size"],
                "residual": k["residual"],
                "dense_ppl": math.exp(base["dense_nll"]) if base["dense_nll"] is not None else None,
                "excess": base["excess"],
                "key_bits": base["key_bits"],
                "variants": found,
            }
        )
    return rows


def goal_check(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goal: on K-only 2-bit per_channel G=32 (R=0), HeadQ rank 16 removes >= 84%."""
    base = next((r for r in rows if r["base"] == GOAL_RUN), None)
    if base is None:
        return {"run": GOAL_RUN, "present": False}
    at16 = {k: v for k, v in base["variants"].items() if k.startswith("r16s")}
    top = max(
        (v for v in at16.values() if v["removed"] is not None), key=lambda v: v["removed"], default=None
    )
    best = None if top is None else top["removed"]
    return {
        "run": GOAL_RUN,
        "present": True,
        "excess": base["excess"],
        "rank16": at16,
        "best_run": None if top is None else top["run"],
        "best_removed": best,
        "goal": GOAL_REMOVED,
        "met": best is not None and best >= GOAL_REMOVED,
    }


# ---------------------------------------------------------------- b. exp2 controls
def basis_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per exp2 base and rank: share removed by the query_pca, key_pca and random bases."""
    exp2 = [r for r in records if r["family"] == "exp2"]
    rows = []
    for base in (r for r in exp2 if is_base(r)):
        table: dict[int, dict[str, Any]] = defaultdict(dict)
        for v in variants(exp2, base):
            if not wrong_sign(v["spec"]):
                table[v["spec"]["headq"]["rank"]][v["spec"]["headq"]["basis"]] = v["removed"]
        rows += [{"base": base["name"], "rank": rank, **table[rank]} for rank in sorted(table)]
    return rows


def wrong_sign_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Wrong-sign HeadQ runs next to their plain base: mean attn_kl and perplexity of both."""
    rows = []
    for base in (r for r in records if r["family"] == "exp2" and is_base(r)):
        for v in variants(records, base):
            if wrong_sign(v["spec"]):
                kl, base_kl = head_mean(v, "attn_kl"), head_mean(base, "attn_kl")
                rows.append(
                    {
                        "run": v["name"],
                        "base": base["name"],
                        "attn_kl": kl,
                        "base_attn_kl": base_kl,
                        "perplexity": v["perplexity"],
                        "base_perplexity": base["perplexity"],
                        "worse_than_plain": _gt(v["perplexity"], base["perplexity"]) and _gt(kl, base_kl),
                    }
                )
    return rows


def _gt(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and a > b


def nullspace_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Null-space noise runs: base quantizer, subspace, dims, mean key_mse / attn_kl, perplexity, excess."""
    rows = []
    for r in records:
        iv = r["spec"].get("intervention")
        if r["family"] == "exp2" and iv:
            rows.append(
                {
                    "run": r["name"],
                    "base": key_name(r["spec"]["key"]),
                    "subspace": iv["subspace"],
                    "dims": iv["dims"],
                    "key_mse": head_mean(r, "key_mse"),
                    "attn_kl": head_mean(r, "attn_kl"),
                    "perplexity": r["perplexity"],
                    "excess": r["excess"],
                }
            )
    return rows


def nullspace_pairs(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Inside vs outside noise on one base and dims: the ratios inside / outside of mean key_mse
    (about 1 when the norms match) and of mean attn_kl, and both perplexities."""
    by = {(r["base"], r["dims"], r["subspace"]): r for r in rows}
    out = []
    for base, dims, _ in sorted(k for k in by if k[2] == "outside"):
        outside, inside = by[(base, dims, "outside")], by.get((base, dims, "inside"))
        if inside is not None:
            out.append(
                {
                    "base": base,
                    "dims": dims,
                    "key_mse_ratio": _ratio(inside["key_mse"], outside["key_mse"]),
                    "attn_kl_ratio": _ratio(inside["attn_kl"], outside["attn_kl"]),
                    "perplexity": [outside["perplexity"], inside["perplexity"]],
                }
            )
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# ---------------------------------------------------------------- c. same-budget counterexamples
def counterexamples(records: Sequence[Record], limit: int = 6) -> list[dict[str, Any]]:
    """Pairs of K-only SOTU runs (no intervention, no wrong sign) with equal effective key bits and
    the same residual window R where ``lower`` has the lower mean key_mse yet the higher mean
    attn_kl AND perplexity; largest perplexity gap first."""
    stats = []
    for r in unique(records):
        if r["corpus"] == "sotu" and k_only(r["spec"]) and not wrong_sign(r["spec"]):
            mse, kl = head_mean(r, "key_mse"), head_mean(r, "attn_kl")
            if None not in (mse, kl, r["perplexity"], r["key_bits"]):
                stats.append((r, mse, kl))
    pairs = []
    for a, a_mse, a_kl in stats:
        for b, b_mse, b_kl in stats:
            if (
                abs(a["key_bits"] - b["key_bits"]) < TIE
                and a["spec"]["key"]["residual"] == b["spec"]["key"]["residual"]
                and a_mse < b_mse
                and a_kl > b_kl
                and a["perplexity"] > b["perplexity"]
            ):
                pairs.append(
                    {
                        "bits": a["key_bits"],
                        "residual": a["spec"]["key"]["residual"],
                        "lower_mse": a["name"],
                        "other": b["name"],
                        "key_mse": [a_mse, b_mse],
                        "attn_kl": [a_kl, b_kl],
                        "perplexity": [a["perplexity"], b["perplexity"]],
                        "ppl_gap": a["perplexity"] - b["perplexity"],
                    }
                )
    return sorted(pairs, key=lambda p: -p["ppl_gap"])[:limit]


def basis_pairs(records: Sequence[Record], job: str = "exp2-controls") -> list[dict[str, Any]]:
    """key_pca vs query_pca on one base quantizer at the same rank (so the same bits): mean key_mse,
    mean attn_kl and perplexity of each (``[query_pca, key_pca]``), and ``counterexample``: key_pca
    has the lower key_mse yet the higher attn_kl and perplexity."""
    rows = []
    for base in (r for r in records if r["job"] == job and is_base(r)):
        by: dict[int, dict[str, Record]] = defaultdict(dict)
        for v in variants(records, base):
            if not wrong_sign(v["spec"]):
                by[v["spec"]["headq"]["rank"]][v["spec"]["headq"]["basis"]] = v
        for rank in sorted(by):
            q, k = by[rank].get("query_pca"), by[rank].get("key_pca")
            if q is None or k is None:
                continue
            mse = [head_mean(q, "key_mse"), head_mean(k, "key_mse")]
            kl = [head_mean(q, "attn_kl"), head_mean(k, "attn_kl")]
            ppl = [q["perplexity"], k["perplexity"]]
            rows.append(
                {
                    "base": base["name"],
                    "rank": rank,
                    "key_bits": q["key_bits"],
                    "key_mse": mse,
                    "attn_kl": kl,
                    "perplexity": ppl,
                    "counterexample": _gt(mse[0], mse[1]) and _gt(kl[1], kl[0]) and _gt(ppl[1], ppl[0]),
                }
            )
    return rows


# ---------------------------------------------------------------- d. predictor check
def predictor_runs(records: Sequence[Record]) -> list[Record]:
    """K-only quantized runs (HeadQ included, interventions excluded) of exp1, exp2 and budget."""
    return [r for r in unique(records) if r["family"] in ("exp1", "exp2", "budget") and k_only(r["spec"])]


def head_columns(runs: Sequence[Record], metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """``{metric: float [heads]}`` over every head row of ``runs`` (NaN where missing), plus
    ``bits``: the key quantizer's bits of the row's run."""
    cols: dict[str, list] = {m: [] for m in (*metrics, "bits")}
    for r in runs:
        for h in r["heads"]:
            for m in metrics:
                cols[m].append(float(h[m]) if finite(h.get(m)) else math.nan)
            cols["bits"].append(r["spec"]["key"]["bits"])
    return {m: np.asarray(v, dtype=float) for m, v in cols.items()}


def predictor_rows(runs: Sequence[Record]) -> list[dict[str, Any]]:
    """Spearman of attn_kl with each predictor over all heads x runs, then within each key bit width."""
    cols = head_columns(runs, (*PREDICTORS, "attn_kl"))
    scopes = [("all", np.ones(len(cols["bits"]), dtype=bool))]
    scopes += [(f"{int(b)}-bit keys", cols["bits"] == b) for b in np.unique(cols["bits"])]
    return [
        {
            "scope": name,
            "heads": int(mask.sum()),
            **{p: spearman(cols[p][mask], cols["attn_kl"][mask]) for p in PREDICTORS},
        }
        for name, mask in scopes
    ]


def run_predictor_row(runs: Sequence[Record]) -> dict[str, Any]:
    """Across runs: Spearman of ``nll - dense nll`` with each per-run sum of a predictor over heads."""
    delta = [
        r["nll"] - r["dense_nll"] if r["nll"] is not None and r["dense_nll"] is not None else math.nan
        for r in runs
    ]
    sums = {p: [_nan(head_sum(r, p)) for r in runs] for p in PREDICTORS}
    return {"runs": len(runs), **{p: spearman(sums[p], delta) for p in PREDICTORS}}


def _nan(v: float | None) -> float:
    return math.nan if v is None else v


# ---------------------------------------------------------------- f. entropy
def entropy_pool(records: Sequence[Record]) -> list[Record]:
    """The SOTU K-only 2-bit per_channel R=0 plain runs (every group size), one per configuration."""
    return [
        r
        for r in unique(records)
        if r["corpus"] == "sotu"
        and is_base(r)
        and r["spec"]["key"]["bits"] == 2
        and r["spec"]["key"]["axis"] == "per_channel"
        and r["spec"]["key"]["residual"] == 0
    ]


def entropy_view(runs: Sequence[Record], bins: int = 5, worst: int = 10) -> dict[str, Any]:
    """Per-head dense-attention entropy against route_flip and attn_kl, pooled over the heads of
    ``runs``: Spearman of each, entropy quantile bins (entropy range, mean attn_kl / route_flip,
    ``kl_share``: the bin's share of the summed attn_kl) and the ``worst`` heads by attn_kl."""
    metrics = ("entropy", "attn_kl", "route_flip")
    heads = [
        {"run": r["name"], **h} for r in runs for h in r["heads"] if all(finite(h.get(m)) for m in metrics)
    ]
    ent = np.array([h["entropy"] for h in heads], dtype=float)
    kl = np.array([h["attn_kl"] for h in heads], dtype=float)
    order = np.argsort(ent, kind="stable")
    table = []
    for i, idx in enumerate(np.array_split(order, bins) if len(heads) >= bins else []):
        table.append(
            {
                "bin": i + 1,
                "heads": len(idx),
                "entropy": [float(ent[idx].min()), float(ent[idx].max())],
                "attn_kl": float(kl[idx].mean()),
                "route_flip": float(np.mean([heads[j]["route_flip"] for j in idx])),
                "kl_share": float(kl[idx].sum() / kl.sum()) if kl.sum() > 0 else None,
            }
        )
    top = sorted(heads, key=lambda h: -h["attn_kl"])[:worst]
    return {
        "runs": [r["name"] for r in runs],
        "jobs": sorted({r["job"] for r in runs}),
        "heads": len(heads),
        "rho_route_flip": spearman(ent, [h["route_flip"] for h in heads]),
        "rho_attn_kl": spearman(ent, kl),
        "bins": table,
        "worst": [{k: h[k] for k in ("run", "layer", "head", *metrics)} for h in top],
    }


# ---------------------------------------------------------------- h. Shakespeare
def shakespeare_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """HeadQ runs on the tragedies: share removed with Shakespeare calibration vs SOTU calibration."""
    own = {r["name"]: r for r in records if r["job"] == "shakespeare-own-cal"}
    sotu = {r["name"]: r for r in records if r["job"] == "shakespeare-sotu-cal"}
    names = [n for n, r in own.items() if k_only(r["spec"]) and r["spec"].get("headq")]
    names += [n for n in sotu if n not in own and sotu[n]["spec"].get("headq")]
    return [
        {
            "run": n,
            "rank": (own.get(n) or sotu[n])["spec"]["headq"]["rank"],
            "basis": (own.get(n) or sotu[n])["spec"]["headq"]["basis"],
            "own_removed": own[n]["removed"] if n in own else None,
            "sotu_removed": sotu[n]["removed"] if n in sotu else None,
        }
        for n in names
    ]
