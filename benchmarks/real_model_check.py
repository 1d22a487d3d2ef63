"""Real-model check: SmolLM2-135M (builtin GGUF), built-in State of the Union corpus.

Calibrates on the 1934-2001 addresses, evaluates on 2002-2021: dense perplexity, K-only 2-bit
(per_channel, G=32, R=0) excess, the share HeadQ r=8 (8-bit side code) removes, wrong-sign and
random-basis controls, and the Spearman rank correlation across all heads of attn_kl with fisher
and with key_mse. Prints a table and writes the full results document plus a summary to JSON.

    .venv/bin/python benchmarks/real_model_check.py --eval-tokens 32768 --calib-tokens 65536
(on a GPU machine: ``--model path/to/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda``)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scipy.stats import spearmanr

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.calibrate import calibrate
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.models.loading import BUILTIN_SMOLLM2, load_model


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (scipy; average ranks for ties)."""
    return float(spearmanr(x, y).statistic)


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

    rows = [h for h in doc["heads"] if h["run"] != "dense"]
    k2_rows = [h for h in rows if h["run"] == "k2"]
    summary = {
        "model": args.model,
        "device": doc["device"],
        "eval_tokens": doc["dataset"]["tokens"],
        "calib_tokens": cal.meta["tokens"],
        "window": args.window,
        "head_windows": doc["dataset"]["head_windows"],
        "runs": {
            r["name"]: {
                k: r[k] for k in ("perplexity", "excess_perplexity", "excess_removed", "effective_bits")
            }
            for r in doc["runs"]
        },
        "spearman_all_runs": {
            "attn_kl~fisher": spearman([h["attn_kl"] for h in rows], [h["fisher"] for h in rows]),
            "attn_kl~key_mse": spearman([h["attn_kl"] for h in rows], [h["key_mse"] for h in rows]),
            "heads": len(rows),
        },
        "spearman_k2": {
            "attn_kl~fisher": spearman([h["attn_kl"] for h in k2_rows], [h["fisher"] for h in k2_rows]),
            "attn_kl~key_mse": spearman([h["attn_kl"] for h in k2_rows], [h["key_mse"] for h in k2_rows]),
            "heads": len(k2_rows),
        },
        "timing": {k: round(v, 1) for k, v in timing.items()},
    }
    print(f"\n{'run':28s} {'ppl':>9s} {'excess':>9s} {'removed':>8s} {'key bits':>8s}")
    for name, r in summary["runs"].items():
        removed = "" if r["excess_removed"] is None else f"{r['excess_removed']:.1%}"
        print(
            f"{name:28s} {r['perplexity']:9.3f} {r['excess_perplexity']:9.3f} {removed:>8s} "
            f"{r['effective_bits']['key']:8.2f}"
        )
    print("spearman (all quantized runs' heads):", summary["spearman_all_runs"])
    print("spearman (k2 heads):", summary["spearman_k2"])
    print("timing:", summary["timing"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "results": doc}))
    print("wrote", out)


if __name__ == "__main__":
    main()
