"""How wide are the intervals at 8, 16, 32 and 64 windows, spread or contiguous? SmolLM2-135M,
built-in State of the Union corpus (calibration: addresses up to 2001; evaluation: 2002-2021),
1,024-token windows, runs dense / k2 / k2+headq8 / k2+headq16 (one rank-16 calibration; rank 8
uses its top 8 directions).

One evaluation of the largest count per placement; the smaller counts are re-aggregated from its
windows by the product's own ``run_rows``. Spread: windows 0, 64/n, 2*64/n, ... which are exactly
the windows an evaluation of n spread windows reads (window i of n starts at chunk
floor(i * available / n)). Contiguous: the first n windows, as an evaluation of n contiguous
windows reads. Prints a table, writes JSON (every config field, versions, device, commit).

    .venv/bin/python -m studies.window_count --out docs/results/window_count.json
(on a GPU machine: ``--model path/to/SmolLM2-135M-Instruct.Q4_1.gguf --device cuda``)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.calibrate import calibrate
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.evaluation.results import run_rows
from headq_core.evaluation.windows import Placement
from headq_core.models.loading import BUILTIN_SMOLLM2, load_model
from headq_spec.uncertainty import windows_for_half_width
from testkit.provenance import provenance

COUNTS = (8, 16, 32, 64)
PLACEMENTS: tuple[Placement, ...] = ("spread", "contiguous")
RANKS = (8, 16)
K2 = QuantConfig(bits=2, axis="per_channel", group_size=32, residual=0)
RUNS = [RunSpec("dense"), RunSpec("k2", key=K2),
        *(RunSpec(f"k2+headq{r}", key=K2, headq=HeadQConfig(rank=r)) for r in RANKS)]


def subset_rows(doc: dict, count: int, runs: list[RunSpec]) -> list[dict]:
    """The run rows of the ``count``-window evaluation of ``runs`` whose windows lie inside ``doc``'s."""
    total = doc["dataset"]["windows"]
    step = total // count if doc["dataset"]["placement"] == "spread" else 1
    pick = torch.arange(count) * step
    sums = {row["name"]: torch.tensor(row["window_nll"], dtype=torch.float64)[pick] for row in doc["runs"]}
    bits = {row["name"]: row["effective_bits"] for row in doc["runs"]}
    return run_rows(runs, sums, doc["runs"][0]["window_tokens"], bits, seed=doc["seed"])


def interval(row: dict, field: str, fmt: str) -> str:
    lo, hi = row[f"{field}_ci"]
    return f"{row[field]:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def print_table(placement: str, table: dict[int, dict[str, dict]]) -> None:
    print(f"\n{placement} windows")
    shares = " ".join(f"{f'headq{r} share removed':>26s}" for r in RANKS)
    print(f"{'windows':>7s} {'k2 excess':>24s} {shares}")
    for count, rows in table.items():
        shares = " ".join(f"{interval(rows[f'k2+headq{r}'], 'excess_removed', '.1%'):>26s}" for r in RANKS)
        print(f"{count:7d} {interval(rows['k2'], 'excess_perplexity', '.3f'):>24s} {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--calib-tokens", type=int, default=65536)
    parser.add_argument("--model", default=BUILTIN_SMOLLM2, help="model id, folder or .gguf file")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="docs/results/window_count.json")
    args = parser.parse_args()
    origin = provenance()  # the commit that runs, read before a long run
    started = time.perf_counter()
    lm = load_model(args.model, device=args.device)
    cal = calibrate(lm, CorpusSpec(split="calibration"), window=args.window, max_tokens=args.calib_tokens,
                    rank=max(RANKS))
    docs, tables = {}, {}
    for placement in PLACEMENTS:
        doc = evaluate(lm, CorpusSpec(split="eval"), RUNS, cal, window=args.window,
                       max_tokens=max(COUNTS) * args.window, placement=placement, heads=False)
        if doc["dataset"]["windows"] != max(COUNTS):
            raise SystemExit(f"the corpus holds only {doc['dataset']['windows']} windows of {args.window}")
        docs[placement] = doc
        tables[placement] = {count: {row["name"]: row for row in subset_rows(doc, count, RUNS)}
                             for count in COUNTS}
        print_table(placement, tables[placement])
    needed = {f"k2+headq{r}": {f"+/-{w:.0%}": windows_for_half_width(
        tables["spread"][max(COUNTS)][f"k2+headq{r}"]["excess_removed_se"], max(COUNTS), w)
        for w in (0.10, 0.05, 0.02)} for r in RANKS}
    print(f"\nspread windows needed for a share-removed interval of (from the SE at {max(COUNTS)}): {needed}")
    spread_doc = docs["spread"]
    out = {**origin, "seconds": round(time.perf_counter() - started),
           "model": spread_doc["model"], "calibration": cal.meta | {"model": None},
           "runs": [r.to_dict() for r in RUNS], "versions": spread_doc["versions"],
           "device": spread_doc["device"], "uncertainty": spread_doc["uncertainty"],
           "windows_for_share_removed_half_width": needed,
           "by_placement": {placement: {
               "dataset": docs[placement]["dataset"],
               "by_count": {str(count): {name: {k: v for k, v in row.items() if k != "window_nll"}
                                         for name, row in rows.items()} for count, rows in table.items()},
               "window_nll": {row["name"]: row["window_nll"] for row in docs[placement]["runs"]}}
               for placement, table in tables.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
