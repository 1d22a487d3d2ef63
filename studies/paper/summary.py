"""The report's summary: every table as data (``summary.json``), with provenance and the paper
side by side (i)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from studies.paper import analysis as A
from studies.paper.frontier import frontier_rows, frontier_view
from studies.paper.fullkv import fullkv_front, fullkv_rows, method_rows
from studies.paper.records import missing_jobs, run_records

PAPER_REMOVED = (0.84, 0.94)


def summarize(items: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every table of the report as data (JSON-ready apart from NaN, see :func:`clean`)."""
    records = run_records(items.values())
    exp1 = A.exp1_rows(records)
    goal = A.goal_check(exp1)
    pruns = A.predictor_runs(records)
    predictors = A.predictor_rows(pruns)
    fullkv = fullkv_rows(records)
    nullspace = A.nullspace_rows(records)
    goal_run = [r for r in records if r["name"] == A.GOAL_RUN and r["corpus"] == "sotu"][:1]
    front_rows = frontier_rows(records)
    return {
        "missing_jobs": missing_jobs(items),
        "provenance": provenance(list(items.values())),
        "exp1": exp1,
        "goal": goal,
        "exp2": {
            "bases": A.basis_rows(records),
            "wrong_sign": A.wrong_sign_rows(records),
            "null_space": nullspace,
            "null_space_pairs": A.nullspace_pairs(nullspace),
        },
        "counterexamples": {"pairs": A.counterexamples(records), "bases": A.basis_pairs(records)},
        "predictors": {"heads": predictors, "runs": A.run_predictor_row(pruns)},
        "fullkv": {"rows": fullkv, "front": fullkv_front(fullkv), "methods": method_rows(fullkv)},
        "entropy": {
            "run": A.entropy_view(goal_run) if goal_run else None,
            "pooled": A.entropy_view(A.entropy_pool(records)),
        },
        "frontier": {"rows": front_rows, **frontier_view(front_rows)},
        "shakespeare": {
            "removed": A.shakespeare_rows(records),
            "fullkv": [
                r
                for r in fullkv_rows(records, "shakespeare-own-cal")
                if r["value_bits"] != 16.0 or r["group"] == "dense"
            ],
        },
        "paper": paper_rows(goal, fullkv, predictors),
    }


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


def paper_rows(
    goal: dict[str, Any], fullkv: Sequence[dict[str, Any]], predictors: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Our numbers next to the paper's three claims, with a plain verdict each."""
    best = goal.get("best_removed")
    rows = [
        {
            "claim": "share of excess removed, strongest 2-bit K-only rows "
            "(ours: k2 per_channel G32, HeadQ r16)",
            "paper": "84–94%",
            "ours": f"{'–' if best is None else f'{100 * best:.1f}%'} ({goal.get('best_run')})",
            "verdict": "n/a"
            if best is None
            else "within"
            if PAPER_REMOVED[0] <= best <= PAPER_REMOVED[1]
            else "above"
            if best > PAPER_REMOVED[1]
            else "below",
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


def clean(obj: Any) -> Any:
    """JSON-ready copy: NaN / inf become None, tuples lists."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
