"""How wide are the intervals at 8, 16, 32 and 64 windows? SmolLM2-135M, built-in State of the Union
corpus (calibration: addresses up to 2001; evaluation: 2002-2021), 1,024-token windows spread over
the evaluation split, runs dense / k2 / k2+headq8.

One evaluation of the largest count; the smaller counts are its windows 0, 64/n, 2*64/n, ... which
are exactly the windows an evaluation of n spread windows reads (window i of n starts at chunk
floor(i * available / n)), re-aggregated by the product's own ``run_rows``. Prints a table, writes
JSON (every config field, versions, device, commit).

    .venv/bin/python -m studies.window_count --out docs/results/window_count.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.calibrate import calibrate
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.evaluation.results import run_rows
from headq_core.models.loading import BUILTIN_SMOLLM2, load_model
from headq_spec.uncertainty import windows_for_half_width

COUNTS = (8, 16, 32, 64)
K2 = QuantConfig(bits=2, axis="per_channel", group_size=32, residual=0)
RUNS = [RunSpec("dense"), RunSpec("k2", key=K2), RunSpec("k2+headq8", key=K2, headq=HeadQConfig(rank=8))]


def subset_rows(doc: dict, count: int) -> list[dict]:
    """The run rows of the ``count`` spread windows inside ``doc``'s windows."""
    total = doc["dataset"]["windows"]
    pick = torch.arange(count) * (total // count)
    sums = {row["name"]: torch.tensor(row["window_nll"], dtype=torch.float64)[pick] for row in doc["runs"]}
    bits = {row["name"]: row["effective_bits"] for row in doc["runs"]}
    return run_rows(RUNS, sums, doc["runs"][0]["window_tokens"], bits, seed=doc["seed"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--calib-tokens", type=int, default=8192)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="docs/results/window_count.json")
    args = parser.parse_args()
    started = time.perf_counter()
    lm = load_model(BUILTIN_SMOLLM2, device=args.device)
    cal = calibrate(lm, CorpusSpec(split="calibration"), window=args.window, max_tokens=args.calib_tokens,
                    rank=8)
    doc = evaluate(lm, CorpusSpec(split="eval"), RUNS, cal, window=args.window,
                   max_tokens=max(COUNTS) * args.window, heads=False)
    if doc["dataset"]["windows"] != max(COUNTS):
        raise SystemExit(f"the corpus holds only {doc['dataset']['windows']} windows of {args.window}")
    table = {count: {row["name"]: row for row in subset_rows(doc, count)} for count in COUNTS}
    print(f"{'windows':>7s} {'k2 excess [95% CI]':>26s} {'share removed [95% CI]':>28s} "
          f"{'dense ppl [95% CI]':>26s}")
    for count, rows in table.items():
        k2, hq, dense = rows["k2"], rows["k2+headq8"], rows["dense"]
        print(f"{count:7d} {k2['excess_perplexity']:8.3f} [{k2['excess_perplexity_ci'][0]:.3f}, "
              f"{k2['excess_perplexity_ci'][1]:.3f}] {hq['excess_removed']:10.1%} "
              f"[{hq['excess_removed_ci'][0]:.1%}, {hq['excess_removed_ci'][1]:.1%}] "
              f"{dense['perplexity']:8.3f} "
              f"[{dense['perplexity_ci'][0]:.3f}, {dense['perplexity_ci'][1]:.3f}]")
    se64 = table[max(COUNTS)]["k2+headq8"]["excess_removed_se"]
    needed = {f"+/-{w:.0%}": windows_for_half_width(se64, max(COUNTS), w) for w in (0.10, 0.05, 0.02)}
    print(f"windows for a share-removed interval of {needed} (from the SE at {max(COUNTS)} windows)")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {"command": f"python -m studies.window_count --window {args.window} --calib-tokens "
                      f"{args.calib_tokens} --device {args.device}",
           "date": time.strftime("%Y-%m-%d"), "commit": commit,
           "seconds": round(time.perf_counter() - started),
           "model": doc["model"], "dataset": doc["dataset"], "calibration": cal.meta | {"model": None},
           "runs": [r.to_dict() for r in RUNS], "versions": doc["versions"], "device": doc["device"],
           "uncertainty": doc["uncertainty"], "windows_for_share_removed_half_width": needed,
           "by_count": {str(count): {name: {k: v for k, v in row.items() if k != "window_nll"}
                                     for name, row in rows.items()} for count, rows in table.items()},
           "window_nll": {row["name"]: row["window_nll"] for row in doc["runs"]}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
