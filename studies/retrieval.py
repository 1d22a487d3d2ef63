"""Does a 2-bit KV cache lose a needle that the dense model finds, and does HeadQ bring it back?
SmolLM2-135M, needle-in-a-haystack prompts (built-in State of the Union haystack, evaluation split),
answered with greedy ``generate()`` through the real cache (``HeadQCache``) of each run: dense, k2,
k2+headq8, k2+headq16, kv2, kv2+headq8+a2 (keys per channel and values per token at 2 bits, G = 32;
one rank-16 calibration on the calibration split). Also: which heads lose the needle (attention
mass on the needle at the answer's first decode step, dense minus quantized).

Writes the JSON (every config field, accuracy grids, per-head means, versions, commit) and the
Markdown report beside it (``.md``), and prints the tables.

    .venv/bin/python -m studies.retrieval --out docs/results/retrieval.json
(smoke size: ``--lengths 256 --depths 0 100``; on a GPU: ``--device cuda``)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from headq_core.evaluation.calibrate import calibrate
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.retrieval import retrieve
from headq_core.models.loading import BUILTIN_SMOLLM2, load_model
from headq_spec.retrieval import RetrievalOptions
from testkit.provenance import provenance

A2 = {"mode": "online", "keep_fraction": 0.1, "high_bits": 8}
TOP = 5  # heads named in the per-head finding


def study_runs(group: int, ranks: tuple[int, int] = (8, 16)) -> list[dict[str, Any]]:
    """The six runs of the study (names as ``headq eval`` names them); HeadQ at the two ``ranks``,
    the full-KV HeadQ + A² run at the smaller."""
    key = {"bits": 2, "axis": "per_channel", "group_size": group, "residual": 0}
    value = {"bits": 2, "axis": "per_token", "group_size": group, "residual": group}
    hq = lambda rank: {"rank": rank, "side_bits": 8}  # noqa: E731
    low, high = ranks
    return [{"name": "dense"}, {"name": "k2", "key": key},
            {"name": f"k2+headq{low}", "key": key, "headq": hq(low)},
            {"name": f"k2+headq{high}", "key": key, "headq": hq(high)},
            {"name": "kv2", "key": key, "value": value},
            {"name": f"kv2+headq{low}+a2", "key": key, "value": value, "headq": hq(low), "value_policy": A2}]


def head_means(doc: dict, run: str, field: str = "needle_mass_lost") -> np.ndarray:
    """Mean of ``field`` over the prompts per (layer, head) of ``run``: [layers, heads]."""
    model = doc["model"]
    total = np.zeros((model["layers"], model["heads"]))
    rows = [h for h in doc["heads"] if h["run"] == run]
    for h in rows:
        total[h["layer"], h["head"]] += h[field]
    return total / max(1, len(rows) // total.size)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def head_finding(doc: dict) -> dict[str, Any]:
    """Per quantized run: the heads losing the most needle attention, the share of all (positive)
    loss they carry, the dense needle mass of those heads, and the mean loss summed over heads on
    the prompts the run answered wrongly vs rightly (losses only: heads that gain attention add 0)."""
    answers = {(a["run"], a["prompt"]): a["correct"] for a in doc["retrieval"]["answers"]}
    out = {}
    for run in sorted({h["run"] for h in doc["heads"]}, key=[r["name"] for r in doc["runs"]].index):
        lost, dense = head_means(doc, run), head_means(doc, run, "needle_mass_dense")
        order = np.argsort(lost, axis=None)[::-1][:TOP]
        positive = np.clip(lost, 0, None)
        per_prompt: dict[bool, list[float]] = {True: [], False: []}
        sums: dict[int, float] = {}
        for h in doc["heads"]:
            if h["run"] == run:
                sums[h["prompt"]] = sums.get(h["prompt"], 0.0) + max(h["needle_mass_lost"], 0.0)
        for prompt, total in sums.items():
            per_prompt[answers[run, prompt]].append(total)
        out[run] = {
            "top_heads": [{"layer": int(i // lost.shape[1]), "head": int(i % lost.shape[1]),
                           "needle_mass_lost": float(lost.flat[i]), "needle_mass_dense": float(dense.flat[i])}
                          for i in order],
            "top_share_of_loss": float(positive.flat[order].sum() / positive.sum())
            if positive.sum() > 0 else None,
            "heads": int(lost.size),
            "loss_summed_over_heads_when_wrong": _mean(per_prompt[False]),
            "loss_summed_over_heads_when_right": _mean(per_prompt[True]),
            "mean_lost": lost.round(6).tolist()}
    return out


def summary(doc: dict) -> dict[str, Any]:
    """What the report needs from the results document (no per-prompt head rows)."""
    block = doc["retrieval"]
    return {"lengths": block["lengths"], "depths": block["depths"], "samples": block["samples"],
            "template": block["template"], "new_tokens": block["new_tokens"],
            "runs": [{k: r[k] for k in ("name", "spec", "effective_bits", "accuracy", "correct", "prompts",
                                         "needle_mass_lost", "attn_kl")} for r in doc["runs"]],
            "accuracy": block["accuracy"], "prompts": block["prompts"], "answers": block["answers"],
            "heads": head_finding(doc)}


def main(argv: list[str] | None = None) -> None:
    from studies.retrieval_report import markdown, print_tables

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=BUILTIN_SMOLLM2, help="model id, folder or .gguf file")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--depths", type=float, nargs="+", default=[float(d) for d in range(0, 101, 10)])
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--group", type=int, default=32)
    parser.add_argument("--ranks", type=int, nargs=2, default=[8, 16],
                        help="HeadQ ranks (the calibration keeps the larger)")
    parser.add_argument("--window", type=int, default=1024, help="calibration window")
    parser.add_argument("--calib-tokens", type=int, default=65536)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/results/retrieval.json")
    args = parser.parse_args(argv)
    origin = provenance()  # the commit that runs, read before a long run
    started = time.perf_counter()
    lm = load_model(args.model, device=args.device)
    cal = calibrate(lm, CorpusSpec(split="calibration"), window=args.window, max_tokens=args.calib_tokens,
                    rank=max(args.ranks))
    options = RetrievalOptions(lengths=args.lengths, depths=args.depths, samples=args.samples,
                               new_tokens=args.new_tokens)
    runs = study_runs(args.group, (args.ranks[0], args.ranks[1]))
    doc = retrieve(lm, CorpusSpec(split="eval"), runs, cal, options=options,
                   max_tokens=max(args.lengths) * 4, seed=args.seed, calibration_job="study",
                   progress=lambda f, s: print(f"\r{f:6.1%} {s:60s}", end="", flush=True))
    print()
    out = {**origin, "seconds": round(time.perf_counter() - started), "model": doc["model"],
           "calibration": cal.meta | {"model": None}, "versions": doc["versions"],
           "device": doc["device"], "dataset": doc["dataset"], **summary(doc)}
    print_tables(out)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    path.with_suffix(".md").write_text(markdown(out))
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
