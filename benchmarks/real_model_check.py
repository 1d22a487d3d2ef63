"""Real-model check: SmolLM2-135M (builtin GGUF), built-in State of the Union corpus.

Calibrates on the 1934-2001 addresses, evaluates on 2002-2021: dense perplexity, K-only 2-bit
(per_channel, G=32, R=0) excess, the share HeadQ r=8 (8-bit side code) removes, wrong-sign and
random-basis controls, and the Spearman rank correlation across all heads of attn_kl with fisher
and with key_mse, each with its 95% interval (paired bootstrap over the windows, computed by the
evaluator). Prints a table and writes the full results document plus a summary to JSON.

    .venv/bin/python benchmarks/real_model_check.py --eval-tokens 32768 --calib-tokens 65536
(on a GPU machine: ``--model path/to/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda``)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.calibrate import calibrate
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.models.loading import BUILTIN_SMOLLM2, load_model
from testkit.provenance import provenance


def with_interval(row: dict, field: str, fmt: str) -> str:
    """``value [lo, hi]`` of a run row's field, empty when it has none."""
    value, ci = row.get(field), row.get(f"{field}_ci")
    if value is None:
        return ""
    return f"{value:{fmt}}" + ("" if ci is None else f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]")


def rho_text(block: dict) -> str:
    """``fisher 0.990 [0.985, 0.993] · key_mse 0.452 [...] (270 heads)`` of a rank-correlation block."""
    parts = [f"{m} {block[m]['rho']:.3f}" + ("" if block[m]["ci"] is None else
             f" [{block[m]['ci'][0]:.3f}, {block[m]['ci'][1]:.3f}]") for m in ("fisher", "key_mse")]
    return " · ".join(parts) + f" ({block['fisher']['heads']} heads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-tokens", type=int, default=32768)
    parser.add_argument("--calib-tokens", type=int, default=32768)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--out", default="docs/results/real_model_check.json")
    parser.add_argument("--model", default=BUILTIN_SMOLLM2, help="model id, folder or .gguf file")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--head-windows", type=int, default=None, help="windows for per-head metrics")
    args = parser.parse_args()
    origin = provenance()  # the commit that runs, read before a long run
    timing = {}

    t0 = time.perf_counter()
    loaded = load_model(args.model, device=args.device)
    timing["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    cal = calibrate(
        loaded, CorpusSpec(split="calibration"), window=args.window, max_tokens=args.calib_tokens, rank=8
    )
    timing["calibrate_s"] = time.perf_counter() - t0

    k2 = QuantConfig(bits=2, axis="per_channel", group_size=32, residual=0)
    runs = [
        RunSpec("dense"),
        RunSpec("k2", key=k2),
        RunSpec("k2_headq8", key=k2, headq=HeadQConfig(rank=8, side_bits=8)),
        RunSpec("k2_headq8_wrong_sign", key=k2, headq=HeadQConfig(rank=8, side_bits=8, sign=-1)),
        RunSpec("k2_headq8_random_basis", key=k2, headq=HeadQConfig(rank=8, side_bits=8, basis="random")),
    ]
    t0 = time.perf_counter()
    doc = evaluate(
        loaded,
        CorpusSpec(split="eval"),
        runs,
        cal,
        window=args.window,
        max_tokens=args.eval_tokens,
        head_windows=args.head_windows,
        progress=lambda f, s: print(f"  {f:6.1%} {s} {time.perf_counter() - t0:7.1f}s", flush=True),
    )
    timing["evaluate_s"] = time.perf_counter() - t0

    fields = ("perplexity", "excess_perplexity", "excess_removed")
    summary = {
        **origin,
        "model": args.model,
        "device": doc["device"],
        "eval_tokens": doc["dataset"]["tokens"],
        "tokens_scored": doc["dataset"]["tokens_scored"],
        "windows": doc["dataset"]["windows"],
        "calib_tokens": cal.meta["tokens"],
        "window": args.window,
        "head_windows": doc["dataset"]["head_windows"],
        "runs": {
            r["name"]: {k: r.get(k) for f in fields for k in (f, f"{f}_se", f"{f}_ci")}
            | {"effective_bits": r["effective_bits"], "rank_correlations": r.get("rank_correlations")}
            for r in doc["runs"]
        },
        "rank_correlations_all_runs": doc.get("rank_correlations"),
        "uncertainty": doc["uncertainty"],
        "timing": {k: round(v, 1) for k, v in timing.items()},
    }
    print(f"\n{'run':24s} {'perplexity [95% CI]':>26s} {'excess [95% CI]':>26s} {'removed [95% CI]':>24s}")
    for name, r in summary["runs"].items():
        print(f"{name:24s} {with_interval(r, 'perplexity', '.3f'):>26s} "
              f"{with_interval(r, 'excess_perplexity', '.3f'):>26s} "
              f"{with_interval(r, 'excess_removed', '.1%'):>24s}")
    print("Spearman rho with attn_kl [95% CI over windows]:")
    for name, r in summary["runs"].items():
        if r["rank_correlations"]:
            print(f"  {name:24s} " + rho_text(r["rank_correlations"]))
    if summary["rank_correlations_all_runs"]:
        print(f"  {'all quantized runs':24s} " + rho_text(summary["rank_correlations_all_runs"]))
    print("timing:", summary["timing"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "results": doc}))
    print("wrote", out)


if __name__ == "__main__":
    main()
