"""The paper-study report: tables, the budget frontier and PNG figures from the job files of
:mod:`studies.paper.run`, plus an importable results bundle.

    python -m studies.paper.report --jobs DIR --out docs/results/paper

writes ``bundle.json.gz`` (``headq import`` loads it into ``headq serve``), ``summary.json`` (every
table as data, with provenance), ``tables.md`` and ``*.png`` (the dashboard's own figure functions,
drawn by :func:`studies.paper.render.render_png`). Every analysis is a small pure function over
*run records* (:func:`run_records`: one dict per run of an evaluation job, its head rows attached),
so the tests check each on hand-made documents.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.dashboard import figures as F
from app.dashboard import results as R
from studies.paper.specs import key_name, study_jobs

Record = dict[str, Any]
PREDICTORS = ("fisher", "score_mse", "key_mse")
TIE = 1e-9  # effective bits closer than this are "equal"
GOAL_RUN, GOAL_REMOVED = "k2-pc-g32-r0", 0.84  # the goal: HeadQ r16 removes >= 84% here
PAPER_REMOVED = (0.84, 0.94)


# ---------------------------------------------------------------- loading and the bundle
def read_jobs(folder: Path) -> dict[str, dict[str, Any]]:
    """``{job name: job item}`` of every ``*.json.gz`` job file in ``folder``, in the study's order
    (calibrations, exp1, exp2, exp4, budget, shakespeare; unknown names last)."""
    items = {}
    for path in sorted(Path(folder).glob("*.json.gz")):
        item = json.loads(gzip.decompress(path.read_bytes()))
        for key in ("name", "spec", "results"):
            if key not in item:
                raise ValueError(f"{path.name}: job file has no '{key}'")
        items[item["name"]] = item
    order = {j.name: i for i, j in enumerate(study_jobs())}
    return {name: items[name] for name in sorted(items, key=lambda n: (order.get(n, len(order)), n))}


def missing_jobs(present: Iterable[str]) -> list[str]:
    """Names of the study's jobs (:func:`studies.paper.specs.study_jobs`) with no job file."""
    have = set(present)
    return [j.name for j in study_jobs() if j.name not in have]


def make_bundle(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"jobs": [{spec, results, artifact_base64}]}`` (app.api.schemas.Bundle), calibrations first."""
    ordered = sorted(items, key=lambda i: i["results"].get("kind") != "calibration")
    return {
        "jobs": [
            {"spec": i["spec"], "results": i["results"], "artifact_base64": i.get("artifact_base64")}
            for i in ordered
        ]
    }


# ---------------------------------------------------------------- statistics
def average_ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks of ``x`` (``[n]``), ties sharing their mean rank."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(len(x))
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (Pearson of average ranks) over pairs where both are finite;
    None with fewer than 3 pairs or a constant side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"y: length {y.shape} differs from x {x.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return None
    rx, ry = average_ranks(x[ok]), average_ranks(y[ok])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return None if denom == 0 else float((rx * ry).sum() / denom)


# ---------------------------------------------------------------- run records
def run_records(items: Iterable[dict[str, Any]]) -> list[Record]:
    """One record per run of every evaluation job: job, family, corpus, calibration (the job spec's
    ``calibration_job``), name, spec, key/value bits, perplexity, nll, excess, removed, the job's
    dense nll, and ``heads`` (its head rows)."""
    out = []
    for item in items:
        doc = item["results"]
        if doc.get("kind") != "evaluation":
            continue
        heads = defaultdict(list)
        for row in doc.get("heads", []):
            heads[row["run"]].append(row)
        dense = next((r for r in doc.get("runs", []) if not _quantized(r.get("spec") or {})), None)
        for r in doc.get("runs", []):
            bits = r.get("effective_bits") or {}
            out.append(
                {
                    "job": item["name"],
                    "family": item.get("family"),
                    "corpus": (doc.get("dataset") or {}).get("name"),
                    "calibration": (item.get("spec") or {}).get("calibration_job"),
                    "name": r["name"],
                    "spec": r.get("spec") or {},
                    "key_bits": bits.get("key"),
                    "value_bits": bits.get("value"),
                    "perplexity": r.get("perplexity"),
                    "nll": r.get("nll"),
                    "excess": r.get("excess_perplexity"),
                    "removed": r.get("excess_removed"),
                    "dense_nll": dense.get("nll") if dense else None,
                    "heads": heads.get(r["name"], []),
                }
            )
    return out


def _quantized(spec: dict) -> bool:
    return bool(spec.get("key") or spec.get("value"))


def k_only(spec: dict) -> bool:
    """Keys quantized, values dense, no value policy nor intervention (HeadQ allowed)."""
    return bool(spec.get("key")) and not (
        spec.get("value") or spec.get("value_policy") or spec.get("intervention")
    )


def head_mean(record: Record, metric: str) -> float | None:
    """Mean of one metric over the run's heads (finite values only), None when there is none."""
    vals = [h[metric] for h in record["heads"] if _finite(h.get(metric))]
    return float(np.mean(vals)) if vals else None


def head_sum(record: Record, metric: str) -> float | None:
    vals = [h[metric] for h in record["heads"] if _finite(h.get(metric))]
    return float(np.sum(vals)) if vals else None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def unique(records: Iterable[Record]) -> list[Record]:
    """First record of each configuration (corpus, calibration and run spec, the name aside): a
    run repeated in several jobs (the plain bases, exp2's query_pca runs) counts once."""
    seen, out = set(), []
    for r in records:
        spec = json.dumps({k: v for k, v in r["spec"].items() if k != "name"}, sort_keys=True)
        if (r["corpus"], r["calibration"], spec) not in seen:
            seen.add((r["corpus"], r["calibration"], spec))
            out.append(r)
    return out


def _jobs(records: Iterable[Record]) -> list[str]:
    return sorted({r["job"] for r in records})


def _is_base(r: Record) -> bool:
    return k_only(r["spec"]) and not r["spec"].get("headq")


def _variants(records: Sequence[Record], base: Record) -> list[Record]:
    """HeadQ runs of the base's job on the base's key quantizer (values dense, no intervention)."""
    return [
        r
        for r in records
        if r["job"] == base["job"]
        and k_only(r["spec"])
        and r["spec"].get("headq")
        and r["spec"]["key"] == base["spec"]["key"]
    ]


# ---------------------------------------------------------------- a. exp1 sweep
def exp1_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One row per plain base of the exp1 jobs: dense ppl, excess, key bits, and per HeadQ variant
    (``"r{rank}s{side_bits}"``) the share of excess removed and the effective key bits."""
    exp1 = [r for r in records if r["family"] == "exp1"]
    rows = []
    for base in (r for r in exp1 if _is_base(r)):
        k = base["spec"]["key"]
        variants = {
            f"r{v['spec']['headq']['rank']}s{v['spec']['headq']['side_bits']}": {
                "removed": v["removed"],
                "key_bits": v["key_bits"],
                "run": v["name"],
            }
            for v in _variants(exp1, base)
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
                "variants": variants,
            }
        )
    return rows


def goal_check(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goal: on K-only 2-bit per_channel G=32 (R=0), HeadQ rank 16 removes >= 84%."""
    base = next((r for r in rows if r["base"] == GOAL_RUN), None)
    if base is None:
        return {"run": GOAL_RUN, "present": False}
    at16 = {k: v for k, v in base["variants"].items() if k.startswith("r16s")}
    scored = [v for v in at16.values() if v["removed"] is not None]
    top = max(scored, key=lambda v: v["removed"], default=None)
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
    for base in (r for r in exp2 if _is_base(r)):
        table: dict[int, dict[str, Any]] = defaultdict(dict)
        for v in _variants(exp2, base):
            hq = v["spec"]["headq"]
            if hq.get("sign", 1) == 1:
                table[hq["rank"]][hq["basis"]] = v["removed"]
        rows += [{"base": base["name"], "rank": rank, **table[rank]} for rank in sorted(table)]
    return rows


def wrong_sign_rows(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Wrong-sign HeadQ runs next to their plain base: mean attn_kl and perplexity of both."""
    rows = []
    for base in (r for r in records if r["family"] == "exp2" and _is_base(r)):
        for v in _variants(records, base):
            if v["spec"]["headq"].get("sign", 1) == -1:
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
        if inside is None:
            continue
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
    """Pairs of K-only runs (SOTU, no intervention) at equal effective key bits where ``lower`` has
    the lower mean key_mse yet the higher mean attn_kl AND perplexity; largest perplexity gap first."""
    runs = [r for r in unique(records) if r["corpus"] == "sotu" and k_only(r["spec"])]
    stats = [(r, head_mean(r, "key_mse"), head_mean(r, "attn_kl")) for r in runs]
    stats = [
        s
        for s in stats
        if s[1] is not None
        and s[2] is not None
        and s[0]["perplexity"] is not None
        and s[0]["key_bits"] is not None
    ]
    pairs = []
    for a, a_mse, a_kl in stats:
        for b, b_mse, b_kl in stats:
            if (
                abs(a["key_bits"] - b["key_bits"]) < TIE
                and a_mse < b_mse
                and a_kl > b_kl
                and a["perplexity"] > b["perplexity"]
            ):
                pairs.append(
                    {
                        "bits": a["key_bits"],
                        "lower_mse": a["name"],
                        "other": b["name"],
                        "key_mse": [a_mse, b_mse],
                        "attn_kl": [a_kl, b_kl],
                        "perplexity": [a["perplexity"], b["perplexity"]],
                        "ppl_gap": a["perplexity"] - b["perplexity"],
                    }
                )
    return sorted(pairs, key=lambda p: -p["ppl_gap"])[:limit]


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
                cols[m].append(float(h[m]) if _finite(h.get(m)) else math.nan)
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


# ---------------------------------------------------------------- e. exp4 full KV
def fullkv_rows(records: Sequence[Record], job: str = "exp4-fullkv") -> list[dict[str, Any]]:
    """Every run of a full-KV job: perplexity, excess, key / value / mean bits, and its group
    (``method``: HeadQ or a value policy; ``rival``: plain quantizers; ``dense``)."""
    rows = []
    for r in records:
        if r["job"] == job:
            spec = r["spec"]
            group = (
                "method"
                if spec.get("headq") or spec.get("value_policy")
                else "rival"
                if _quantized(spec)
                else "dense"
            )
            mean = (
                (r["key_bits"] + r["value_bits"]) / 2
                if None not in (r["key_bits"], r["value_bits"])
                else None
            )
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


def budget_verdicts(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every method x rival pair: who has lower perplexity at no more mean bits (``method``,
    ``rival``), or ``neither`` (the cheaper one is worse)."""
    out = []
    for m in (r for r in rows if r["group"] == "method"):
        for v in (r for r in rows if r["group"] == "rival"):
            if None in (m["mean_bits"], v["mean_bits"], m["perplexity"], v["perplexity"]):
                continue
            if m["mean_bits"] <= v["mean_bits"] + TIE and m["perplexity"] < v["perplexity"]:
                winner = "method"
            elif v["mean_bits"] <= m["mean_bits"] + TIE and v["perplexity"] < m["perplexity"]:
                winner = "rival"
            else:
                winner = "neither"
            out.append(
                {
                    "method": m["run"],
                    "rival": v["run"],
                    "bits": [m["mean_bits"], v["mean_bits"]],
                    "perplexity": [m["perplexity"], v["perplexity"]],
                    "winner": winner,
                }
            )
    return out


# ---------------------------------------------------------------- f. exp5 entropy
def entropy_view(record: Record, bins: int = 5, worst: int = 10) -> dict[str, Any]:
    """Per-head dense-attention entropy against route_flip and attn_kl for one run: Spearman,
    entropy quantile bins (mean entropy / attn_kl / route_flip) and the ``worst`` heads by attn_kl."""
    heads = [
        h for h in record["heads"] if all(_finite(h.get(m)) for m in ("entropy", "attn_kl", "route_flip"))
    ]
    ent = np.array([h["entropy"] for h in heads])
    order = np.argsort(ent, kind="stable")
    table = []
    for i, idx in enumerate(np.array_split(order, bins) if len(heads) >= bins else []):
        chosen = [heads[j] for j in idx]
        table.append(
            {
                "bin": i + 1,
                "heads": len(chosen),
                "entropy": [float(ent[idx].min()), float(ent[idx].max())],
                **{m: float(np.mean([h[m] for h in chosen])) for m in ("attn_kl", "route_flip")},
            }
        )
    top = sorted(heads, key=lambda h: -h["attn_kl"])[:worst]
    return {
        "run": record["name"],
        "job": record["job"],
        "heads": len(heads),
        "rho_route_flip": spearman(ent, [h["route_flip"] for h in heads]),
        "rho_attn_kl": spearman(ent, [h["attn_kl"] for h in heads]),
        "bins": table,
        "worst": [{k: h[k] for k in ("layer", "head", "entropy", "attn_kl", "route_flip")} for h in top],
    }


# ---------------------------------------------------------------- g. the budget frontier
def frontier_runs(records: Sequence[Record]) -> list[Record]:
    """K-only per_channel R=0 runs of exp1 and budget (plain and HeadQ)."""
    return [
        r
        for r in unique(records)
        if r["family"] in ("exp1", "budget")
        and k_only(r["spec"])
        and r["spec"]["key"]["axis"] == "per_channel"
        and r["spec"]["key"]["residual"] == 0
    ]


def frontier_view(rows: Sequence[dict[str, Any]], low: float = 2.5, high: float = 4.0) -> dict[str, Any]:
    """For budget rows ``{run, kind, key_bits, excess}``: the Pareto frontier (plain + HeadQ, and
    plain alone), and for each HeadQ point in ``[low, high]`` bits the best plain excess at <= its
    bits, the fewest plain bits that reach its excess, whether it beats the plain frontier (lower
    excess than every plain point at <= its bits, of which there must be one) and whether it beats
    every plain point at >= its bits too."""
    rows = [r for r in rows if r["kind"] in ("plain", "HeadQ") and None not in (r["key_bits"], r["excess"])]
    plain = [r for r in rows if r["kind"] == "plain"]
    points = []
    for h in (r for r in rows if r["kind"] == "HeadQ" and low - TIE <= r["key_bits"] <= high + TIE):
        cheaper = [p["excess"] for p in plain if p["key_bits"] <= h["key_bits"] + TIE]
        costlier = [p["excess"] for p in plain if p["key_bits"] >= h["key_bits"] - TIE]
        matching = [p["key_bits"] for p in plain if p["excess"] <= h["excess"]]
        best = min(cheaper) if cheaper else None
        points.append(
            {
                **h,
                "plain_best_at_or_below": best,
                "plain_bits_to_match": min(matching) if matching else None,
                "beats_plain_frontier": best is not None and h["excess"] < best,
                "beats_costlier_plain": bool(costlier) and h["excess"] < min(costlier),
            }
        )
    winners = [p for p in points if p["beats_plain_frontier"]]
    return {
        "front": F.pareto_front([(r["key_bits"], r["excess"]) for r in rows]),
        "plain_front": F.pareto_front([(r["key_bits"], r["excess"]) for r in plain]),
        "range": [low, high],
        "headq_points": points,
        "headq_beats_plain": bool(winners),
        "winners": sorted(winners, key=lambda p: p["key_bits"]),
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


# ---------------------------------------------------------------- i. side by side with the paper
def paper_rows(
    goal: dict[str, Any], fullkv: Sequence[dict[str, Any]], predictors: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Our numbers next to the paper's three claims, with a plain verdict each."""
    rows = [
        {
            "claim": "share of excess removed, strongest 2-bit K-only rows "
            "(ours: k2 per_channel G32, HeadQ r16)",
            "paper": "84–94%",
            "ours": f"{_pct(goal.get('best_removed'))} ({goal.get('best_run')})",
            "verdict": "n/a"
            if goal.get("best_removed") is None
            else (
                "within"
                if PAPER_REMOVED[0] <= goal["best_removed"] <= PAPER_REMOVED[1]
                else "above"
                if goal["best_removed"] > PAPER_REMOVED[1]
                else "below"
            ),
        }
    ]
    by = {r["run"]: r for r in fullkv}
    plain, both = by.get("kv2"), [r for n, r in by.items() if "+hq" in n and "+a2" in n]
    if plain and both:
        better = sum(r["perplexity"] < plain["perplexity"] for r in both)
        listed = ", ".join(f"{r['run']} {r['perplexity']:.3f}" for r in both)
        rows.append(
            {
                "claim": "full-KV 2-bit: HeadQ + A² improves on plain 2-bit KV (paper: all six models; "
                "ours: one model)",
                "paper": "improves",
                "ours": f"ppl {listed} vs kv2 {plain['perplexity']:.3f}",
                "verdict": "improves" if better == len(both) else "mixed" if better else "does not improve",
            }
        )
    everything = next((r for r in predictors if r["scope"] == "all"), None)
    if everything and everything["fisher"] is not None and everything["key_mse"] is not None:
        rows.append(
            {
                "claim": "fisher predicts attn_kl far better than key_mse (Spearman over heads)",
                "paper": "fisher ≫ key_mse",
                "ours": f"ρ fisher {everything['fisher']:.3f}, key_mse {everything['key_mse']:.3f}",
                "verdict": "agrees" if everything["fisher"] > everything["key_mse"] else "disagrees",
            }
        )
    return rows


# ---------------------------------------------------------------- provenance
def provenance(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per job: family, model, device, versions, commit, host, tokens, windows, runs, wall time."""
    out = []
    for i in items:
        doc = i["results"]
        data = doc.get("dataset") or {}
        out.append(
            {
                "job": i["name"],
                "family": i.get("family"),
                "kind": doc.get("kind"),
                "model": (doc.get("model") or {}).get("id"),
                "device": doc.get("device"),
                "versions": doc.get("versions"),
                "commit": i.get("commit"),
                "host": i.get("host"),
                "corpus": data.get("name"),
                "tokens": data.get("tokens"),
                "windows": data.get("windows"),
                "runs": len(doc.get("runs", [])),
                "wall_s": i.get("wall_s"),
            }
        )
    return out


# ---------------------------------------------------------------- everything
def summarize(items: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every table of the report as data (JSON-ready apart from NaN, see :func:`clean`)."""
    records = run_records(items.values())
    exp1 = exp1_rows(records)
    goal = goal_check(exp1)
    pruns = predictor_runs(records)
    predictors = predictor_rows(pruns)
    fullkv = fullkv_rows(records)
    nullspace = nullspace_rows(records)
    entropy_run = next((r for r in records if r["name"] == GOAL_RUN and r["corpus"] == "sotu"), None)
    front_rows = R.budget_rows({"runs": [_as_run(r) for r in frontier_runs(records)]})
    return {
        "missing_jobs": missing_jobs(items),
        "provenance": provenance(list(items.values())),
        "exp1": exp1,
        "goal": goal,
        "exp2": {
            "bases": basis_rows(records),
            "wrong_sign": wrong_sign_rows(records),
            "null_space": nullspace,
            "null_space_pairs": nullspace_pairs(nullspace),
        },
        "counterexamples": counterexamples(records),
        "predictors": {"heads": predictors, "runs": run_predictor_row(pruns)},
        "fullkv": {"rows": fullkv, "verdicts": budget_verdicts(fullkv)},
        "entropy": entropy_view(entropy_run) if entropy_run else None,
        "frontier": {"rows": front_rows, **frontier_view(front_rows)},
        "shakespeare": {
            "removed": shakespeare_rows(records),
            "fullkv": [
                r
                for r in fullkv_rows(records, "shakespeare-own-cal")
                if r["value_bits"] != 16.0 or r["group"] == "dense"
            ],
        },
        "paper": paper_rows(goal, fullkv, predictors),
    }


def _as_run(r: Record) -> dict[str, Any]:
    """A record back in the results document's run shape (for the dashboard's row functions)."""
    return {
        "name": r["name"],
        "spec": r["spec"],
        "effective_bits": {"key": r["key_bits"], "value": r["value_bits"]},
        "perplexity": r["perplexity"],
        "excess_perplexity": r["excess"],
        "excess_removed": r["removed"],
    }


def clean(obj: Any) -> Any:
    """JSON-ready copy: NaN / inf become None, tuples lists."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------- markdown
def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table; None cells print as ``–``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("–" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, digits: int = 4) -> str | None:
    return None if v is None else f"{v:.{digits}g}"


def _section(title: str, jobs: Iterable[str], body: str) -> str:
    names = ", ".join(f"`{j}`" for j in jobs) or "(no job file)"
    return f"## {title}\n\nFrom: {names}\n\n{body}\n"


def markdown(s: dict[str, Any], records: Sequence[Record]) -> str:
    """``tables.md``: every table of the summary ``s``, each headed with the jobs it comes from."""
    fam = {
        f: _jobs(r for r in records if r["family"] == f)
        for f in ("exp1", "exp2", "exp4", "budget", "shakespeare")
    }
    parts = [
        "# Paper study: tables\n",
        "Generated by `python -m studies.paper.report`; numbers from the job "
        "files, unrounded values in `summary.json`.\n",
        "Missing job files: " + (", ".join(f"`{m}`" for m in s["missing_jobs"]) or "none") + "\n",
    ]
    parts.append(
        _section(
            "Provenance",
            [p["job"] for p in s["provenance"]],
            md_table(
                ["job", "family", "device", "corpus", "tokens", "runs", "wall s", "commit"],
                [
                    [
                        p["job"],
                        p["family"],
                        p["device"],
                        p["corpus"],
                        p["tokens"],
                        p["runs"],
                        p["wall_s"],
                        p["commit"],
                    ]
                    for p in s["provenance"]
                ],
            ),
        )
    )
    parts.append(_exp1_md(s, fam["exp1"]))
    parts.append(_exp2_md(s, fam["exp2"]))
    c = s["counterexamples"]
    parts.append(
        _section(
            "c. Same-budget counterexamples (lower key_mse, higher attn_kl and perplexity)",
            _jobs(r for r in records if r["corpus"] == "sotu"),
            md_table(
                ["key bits", "lower key_mse", "other", "key_mse", "attn_kl", "perplexity"],
                [
                    [
                        _num(p["bits"]),
                        p["lower_mse"],
                        p["other"],
                        " vs ".join(_num(v) for v in p["key_mse"]),
                        " vs ".join(_num(v) for v in p["attn_kl"]),
                        " vs ".join(_num(v, 5) for v in p["perplexity"]),
                    ]
                    for p in c
                ],
            )
            if c
            else "No such pair among the runs present.",
        )
    )
    p = s["predictors"]
    body = md_table(
        ["scope", "heads", *[f"ρ(attn_kl, {m})" for m in PREDICTORS]],
        [[r["scope"], r["heads"], *[_num(r[m], 3) for m in PREDICTORS]] for r in p["heads"]],
    )
    body += (
        "\n\nAcross runs ("
        + str(p["runs"]["runs"])
        + " runs), Spearman of nll − dense nll with the per-run sum: "
    )
    body += ", ".join(f"{m} {_num(p['runs'][m], 3)}" for m in PREDICTORS) + "\n"
    parts.append(
        _section(
            "d. Predictor check (Spearman, average ranks)", fam["exp1"] + fam["exp2"] + fam["budget"], body
        )
    )
    parts.append(_fullkv_md(s, fam["exp4"]))
    parts.append(_entropy_md(s["entropy"]))
    parts.append(_frontier_md(s["frontier"], fam["exp1"] + fam["budget"]))
    sh = s["shakespeare"]
    body = md_table(
        ["run", "rank", "basis", "removed (Shakespeare cal)", "removed (SOTU cal)"],
        [
            [r["run"], r["rank"], r["basis"], _pct(r["own_removed"]), _pct(r["sotu_removed"])]
            for r in sh["removed"]
        ],
    )
    body += "\n\n" + _fullkv_table(sh["fullkv"])
    parts.append(_section("h. Shakespeare: own vs SOTU calibration", fam["shakespeare"], body))
    parts.append(
        _section(
            "i. Side by side with the paper",
            [j for j in ("exp1-k2-pc-g32", "exp4-fullkv") if j in fam["exp1"] + fam["exp4"]]
            + fam["exp2"]
            + fam["budget"],
            md_table(
                ["claim", "paper", "ours", "verdict"],
                [[r["claim"], r["paper"], r["ours"], r["verdict"]] for r in s["paper"]],
            ),
        )
    )
    return "\n".join(parts)


def _exp1_md(s: dict[str, Any], jobs: list[str]) -> str:
    rows = s["exp1"]
    body = md_table(
        ["base", "dense ppl", "excess", "key bits"],
        [[r["base"], _num(r["dense_ppl"], 5), _num(r["excess"]), _num(r["key_bits"])] for r in rows],
    )
    for side in (16, 8, 4):
        ranks = sorted(
            {int(k[1:].split("s")[0]) for r in rows for k in r["variants"] if k.endswith(f"s{side}")}
        )
        if ranks:
            body += f"\n\nShare of excess removed (effective key bits), side bits {side}:\n\n" + md_table(
                ["base", *[f"r{k}" for k in ranks]],
                [[r["base"], *[_cell(r["variants"].get(f"r{k}s{side}")) for k in ranks]] for r in rows],
            )
    g = s["goal"]
    if g["present"]:
        body += (
            f"\n\n**Goal** ({g['run']}, HeadQ rank 16, ≥ {_pct(g['goal'])} removed; paper 84–94%): "
            f"best {_pct(g['best_removed'])} → {'met' if g['met'] else 'NOT met'}; "
            + ", ".join(
                f"{k}: {_pct(v['removed'])} at {_num(v['key_bits'])} bits" for k, v in g["rank16"].items()
            )
        )
    else:
        body += f"\n\n**Goal**: the run {g['run']} is missing."
    return _section("a. exp1: K-only sweep", jobs, body)


def _cell(v: dict[str, Any] | None) -> str | None:
    return None if v is None else f"{_pct(v['removed']) or '–'} ({_num(v['key_bits'])})"


def _exp2_md(s: dict[str, Any], jobs: list[str]) -> str:
    e = s["exp2"]
    body = "Share of excess removed per basis:\n\n" + md_table(
        ["base", "rank", "query_pca", "key_pca", "random"],
        [
            [r["base"], r["rank"], *[_pct(r.get(b)) for b in ("query_pca", "key_pca", "random")]]
            for r in e["bases"]
        ],
    )
    body += "\n\nWrong sign (should be worse than no correction):\n\n" + md_table(
        ["run", "attn_kl", "plain attn_kl", "ppl", "plain ppl", "worse than plain"],
        [
            [
                r["run"],
                _num(r["attn_kl"]),
                _num(r["base_attn_kl"]),
                _num(r["perplexity"], 5),
                _num(r["base_perplexity"], 5),
                r["worse_than_plain"],
            ]
            for r in e["wrong_sign"]
        ],
    )
    body += "\n\nNull-space noise (key_mse should match; attn_kl and ppl should not):\n\n" + md_table(
        ["run", "subspace", "dims", "key_mse", "attn_kl", "ppl", "excess"],
        [
            [
                r["run"],
                r["subspace"],
                r["dims"],
                _num(r["key_mse"]),
                _num(r["attn_kl"]),
                _num(r["perplexity"], 5),
                _num(r["excess"]),
            ]
            for r in e["null_space"]
        ],
    )
    body += "\n\nInside / outside the query subspace (ratios of the means):\n\n" + md_table(
        ["base", "dims", "key_mse inside/outside", "attn_kl inside/outside", "ppl outside vs inside"],
        [
            [
                p["base"],
                p["dims"],
                _num(p["key_mse_ratio"], 3),
                _num(p["attn_kl_ratio"], 3),
                " vs ".join(_num(v, 5) for v in p["perplexity"]),
            ]
            for p in e["null_space_pairs"]
        ],
    )
    return _section("b. exp2: controls", jobs, body)


def _fullkv_table(rows: Sequence[dict[str, Any]]) -> str:
    return md_table(
        ["run", "ppl", "excess", "key bits", "value bits", "mean bits"],
        [
            [
                r["run"],
                _num(r["perplexity"], 5),
                _num(r["excess"]),
                _num(r["key_bits"]),
                _num(r["value_bits"]),
                _num(r["mean_bits"]),
            ]
            for r in rows
        ],
    )


def _fullkv_md(s: dict[str, Any], jobs: list[str]) -> str:
    f = s["fullkv"]
    body = _fullkv_table(f["rows"]) + "\n\nEqual-budget verdicts (lower perplexity at no more mean bits):\n\n"
    body += md_table(
        ["method", "rival", "mean bits", "ppl", "winner"],
        [
            [
                v["method"],
                v["rival"],
                " vs ".join(_num(b) for b in v["bits"]),
                " vs ".join(_num(p, 5) for p in v["perplexity"]),
                v["winner"],
            ]
            for v in f["verdicts"]
        ],
    )
    return _section("e. exp4: full-KV 2-bit", jobs, body)


def _entropy_md(e: dict[str, Any] | None) -> str:
    if e is None:
        return _section("f. exp5: entropy and route flips", [], f"The run {GOAL_RUN} is missing.")
    body = (
        f"Run `{e['run']}`, {e['heads']} heads: "
        f"Spearman(entropy, route_flip) = {_num(e['rho_route_flip'], 3)}, "
        f"Spearman(entropy, attn_kl) = {_num(e['rho_attn_kl'], 3)}.\n\n"
    )
    body += md_table(
        ["entropy quintile", "heads", "entropy range", "mean attn_kl", "mean route_flip"],
        [
            [
                b["bin"],
                b["heads"],
                " – ".join(_num(v, 3) for v in b["entropy"]),
                _num(b["attn_kl"]),
                _num(b["route_flip"]),
            ]
            for b in e["bins"]
        ],
    )
    body += "\n\nWorst heads by attn_kl:\n\n" + md_table(
        ["layer", "head", "entropy", "attn_kl", "route_flip"],
        [
            [h["layer"], h["head"], _num(h["entropy"], 3), _num(h["attn_kl"]), _num(h["route_flip"], 3)]
            for h in e["worst"]
        ],
    )
    return _section("f. exp5: entropy and route flips", [e["job"]], body)


def _frontier_md(f: dict[str, Any], jobs: list[str]) -> str:
    low, high = f["range"]
    if f["headq_beats_plain"]:
        answer = (
            f"**Yes**: {len(f['winners'])} HeadQ point(s) between {low} and {high} key bits have lower "
            "excess than every plain point at the same or fewer bits."
        )
    else:
        answer = f"**No**: no HeadQ point between {low} and {high} key bits beats the plain frontier."
    body = answer + "\n\nPlain frontier: " + ", ".join(f"({x:.4g}, {y:.4g})" for x, y in f["plain_front"])
    body += "\n\nJoint frontier: " + ", ".join(f"({x:.4g}, {y:.4g})" for x, y in f["front"]) + "\n\n"
    body += md_table(
        [
            "HeadQ run",
            "key bits",
            "excess",
            "best plain at ≤ bits",
            "plain bits to match",
            "beats plain frontier",
            "beats every plain at ≥ bits",
        ],
        [
            [
                p["run"],
                _num(p["key_bits"]),
                _num(p["excess"]),
                _num(p["plain_best_at_or_below"]),
                _num(p["plain_bits_to_match"]),
                p["beats_plain_frontier"],
                p["beats_costlier_plain"],
            ]
            for p in sorted(f["headq_points"], key=lambda p: p["key_bits"])
        ],
    )
    return _section("g. The budget frontier (K-only per_channel R=0)", jobs, body)


# ---------------------------------------------------------------- figures
def figure_specs(items: dict[str, dict[str, Any]], s: dict[str, Any]) -> dict[str, Callable[[], dict]]:
    """``{file name: builder}`` of the report's figures, each from a dashboard figure function."""
    out: dict[str, Callable[[], dict]] = {"budget.png": lambda: F.budget_figure(s["frontier"]["rows"])}
    exp1 = items.get("exp1-k2-pc-g32", {}).get("results")
    if exp1:
        keep = [
            r
            for r in exp1["runs"]
            if r["name"] == "dense"
            or r["name"] == GOAL_RUN
            or (r["name"].startswith(GOAL_RUN + "+") and r["name"].endswith("s8"))
        ]
        out["exp1-k2-pc-g32-r0.png"] = lambda: _wide(F.perplexity_figure(R.perplexity_rows({"runs": keep})))
        for run in (GOAL_RUN, GOAL_RUN + "+hq16s8"):
            if run in R.run_names(exp1):
                out[f"heatmap-attn_kl-{run}.png"] = _heatmap(exp1, run, "attn_kl", True)
        if GOAL_RUN in R.run_names(exp1):
            out["heatmap-entropy.png"] = _heatmap(exp1, GOAL_RUN, "entropy", False)
    if "exp4-fullkv" in items:
        out["exp4-fullkv.png"] = lambda: _wide(
            F.perplexity_figure(R.perplexity_rows(items["exp4-fullkv"]["results"]))
        )
    if "exp2-controls" in items:
        doc = items["exp2-controls"]["results"]
        runs = [r["name"] for r in doc["runs"] if k_only(r.get("spec") or {})]
        points = R.predictor_points(doc, runs)
        rho = R.rank_correlations(points) if len(points["attn_kl"]) else {"fisher": None, "key_mse": None}
        for metric in ("fisher", "key_mse"):
            out[f"predictor-{metric}-exp2.png"] = _predictor(points, metric, rho[metric])
    cal = items.get("paper-cal-sotu", {}).get("results")
    if cal and (cal.get("arrays") or {}).get("query_spectrum"):
        spectrum = cal["arrays"]["query_spectrum"][0][0]
        out["spectrum-layer0-kv0.png"] = lambda: F.spectrum_figure(
            spectrum, 16, "query spectrum, layer 0, KV head 0"
        )
    return out


def _wide(fig: dict) -> dict:
    """A bar chart sized for print: wide, with room for its two-line slanted tick labels."""
    layout = fig["layout"]
    return {
        **fig,
        "layout": {**layout, "width": 1400, "height": 560, "margin": {**layout["margin"], "b": 150}},
    }


def _heatmap(doc: dict, run: str, metric: str, log: bool) -> Callable[[], dict]:
    def build() -> dict:
        fig = F.heatmap_figure(R.head_matrix(doc, run, metric), metric, log=log)
        title = fig["layout"]["title"]
        return {**fig, "layout": {**fig["layout"], "title": {**title, "text": f"{run}: {title['text']}"}}}

    return build


def _predictor(points: dict, metric: str, rho: float | None) -> Callable[[], dict]:
    return lambda: F.predictor_figure(points[metric], points["attn_kl"], points["run"], metric, rho)


# ---------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", required=True, help="folder of the job files (*.json.gz)")
    parser.add_argument("--out", required=True, help="folder for bundle, summary, tables and figures")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures (no Chromium)")
    args = parser.parse_args(argv)
    items = read_jobs(Path(args.jobs))
    if not items:
        raise SystemExit(f"--jobs: no *.json.gz job file in {args.jobs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bundle.json.gz").write_bytes(
        gzip.compress(json.dumps(make_bundle(list(items.values()))).encode(), 6)
    )
    summary = clean(summarize(items))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "tables.md").write_text(markdown(summary, run_records(items.values())))
    if not args.no_figures:
        from studies.paper.render import render_png

        for name, build in figure_specs(items, summary).items():
            (out / name).write_bytes(render_png(build()))
    missing = summary["missing_jobs"]
    print(f"{len(items)} job files, missing {len(missing)}: {' '.join(missing) or 'none'}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
