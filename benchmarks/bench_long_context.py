"""Long-context evaluation speed and memory (issue 18): one window per pass of a random-weight model
of a real shape (speed does not depend on the weights), windows of 4k to 32k tokens.

Cases, each one teacher-forced pass with the NLL in chunks (``evaluation.token_nll``), as
``evaluate`` runs a window: ``dense`` (the model's own attention), ``k2``, ``k2+hq8`` and
``kv2+hq8+a2`` and ``k2+metrics`` (per-head metrics on 256 sampled query rows) on each O(L)-memory
path of ``--paths``: ``fused`` (``evaluation.fused_attention.FusedRunAttention``, FlexAttention) and
``blockwise`` (``evaluation.blockwise_attention.BlockwiseRunAttention``), both under the structural
masks the evaluator uses (no ``[L, L]`` mask); with ``--materialised N`` the same runs on the
materialised reference path (``RunAttention``) on windows up to N tokens. Seconds per pass (median
of ``--repeats`` after a warm-up), the ratio to dense, and on a GPU the peak memory of each case;
a case that runs out of memory is reported as ``oom``, one that fails as ``error: <type>``. Prints
a table, writes JSON (after every case, so a run cut off keeps what it measured).

    .venv/bin/python benchmarks/bench_long_context.py --tiny          # CPU check, seconds
    python3 benchmarks/bench_long_context.py --device cuda --dtype bfloat16 --paths fused blockwise \\
        --windows 4096 8192 16384 32768 --out $OUT/long_context_h100.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from bench_timing import GIB, provenance, wall_ms
from gpu_shapes import KEY, VALUE
from random_model import SHAPES, random_llama

from headq_core.config import HeadQConfig, RunSpec, ValuePolicyConfig
from headq_core.evaluation.attention_paths import mask_context
from headq_core.evaluation.blockwise_attention import BlockwiseRunAttention
from headq_core.evaluation.fused_attention import FusedRunAttention
from headq_core.evaluation.head_accumulator import HeadAccumulator
from headq_core.evaluation.positions import sample_rows
from headq_core.evaluation.run_attention import RunAttention
from headq_core.evaluation.token_nll import token_nll
from headq_core.models.adapter import attention_handler

HQ8 = HeadQConfig(rank=8, basis="random", side_bits=8)
RUNS = {
    "k2": RunSpec("k2", key=KEY),
    "k2+hq8": RunSpec("k2+hq8", key=KEY, headq=HQ8),
    "kv2+hq8+a2": RunSpec("kv2+hq8+a2", key=KEY, value=VALUE, headq=HQ8, value_policy=ValuePolicyConfig()),
}
HEAD_ROWS = 256
Handler = Callable[[], RunAttention | None]
PATHS = {"fused": FusedRunAttention, "blockwise": BlockwiseRunAttention}


def cases(model, window: int, paths: list[str], materialised: bool) -> dict[str, Handler]:
    """Case name -> a maker of its attention handler (None: the model's own attention)."""
    cfg = model.config
    rows = sample_rows(window, HEAD_ROWS)
    out: dict[str, Handler] = {"dense": lambda: None}
    for path in paths:
        kind = PATHS[path]
        for name, run in RUNS.items():
            out[f"{name} ({path})"] = functools.partial(kind, run)

        def with_metrics(kind=kind) -> RunAttention:
            acc = HeadAccumulator(cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads)
            return kind(RUNS["k2"], sink=acc.add, rows=torch.arange(window) if rows is None else rows)

        out[f"k2+metrics ({path})"] = with_metrics
    if materialised:
        for name, run in RUNS.items():
            out[f"{name} (materialised)"] = functools.partial(RunAttention, run)
    return out


def one_pass(model, ids: torch.Tensor, make: Handler) -> float:
    """One teacher-forced pass and its summed NLL, the LM head in chunks."""
    handler = make()
    with torch.no_grad():
        if handler is None:
            return float(token_nll(model, ids, 1).sum())
        path = "materialised" if type(handler) is RunAttention else "blockwise"
        with attention_handler(model, handler), mask_context(model, path):
            return float(token_nll(model, ids, 1).sum())


def measure(model, ids: torch.Tensor, make: Handler, repeats: int, device: str) -> dict:
    """Median seconds and peak memory (GiB, GPU only) of ``repeats`` passes after a warm-up, and
    the NLL per token of the pass (the paths must agree: the table shows it)."""
    cuda = device.startswith("cuda")
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        warmup = time.perf_counter()
        nll = one_pass(model, ids, make) / (ids.shape[1] - 1)
        warmup = time.perf_counter() - warmup  # with a GPU kernel's compilation
        seconds = statistics.median(wall_ms(lambda: one_pass(model, ids, make), device)
                                    for _ in range(repeats)) / 1e3
    except torch.OutOfMemoryError:
        return {"seconds": None, "peak_gib": None, "nll": None, "status": "oom"}
    except Exception as error:  # reported in its row; the other cases still run
        traceback.print_exc()
        return {"seconds": None, "peak_gib": None, "nll": None, "status": f"error: {type(error).__name__}"}
    peak = torch.cuda.max_memory_allocated() / GIB if cuda else None
    return {"seconds": seconds, "peak_gib": peak, "nll": nll, "warmup_s": warmup, "status": "ok"}


def cell(row: dict, value: float | None, fmt: str) -> str:
    """A table cell: the number, ``-`` when not measured (CPU memory), or the row's status (oom)."""
    if row["status"] != "ok":
        return row["status"]
    return "-" if value is None else format(value, fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    parser.add_argument("--layers", type=int, default=None, help="first N layers only (default all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--windows", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", nargs="+", choices=sorted(PATHS), default=["fused", "blockwise"])
    parser.add_argument("--cases", nargs="+", default=None,
                        help="only these runs (e.g. kv2+hq8+a2 k2+metrics; dense always runs)")
    parser.add_argument("--materialised", type=int, default=0,
                        help="also time the reference path on windows up to this many tokens")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU check: smollm2 shape, 2 layers, float32, windows 256 and 512, 1 repeat")
    parser.add_argument("--out", default="benchmarks/results/long_context_cpu.json")
    args = parser.parse_args()
    if args.tiny:
        args.shape, args.layers, args.dtype = "smollm2", 2, "float32"
        args.windows, args.repeats, args.materialised = [256, 512], 1, 512
    model = random_llama(args.shape, layers=args.layers, dtype=getattr(torch, args.dtype), device=args.device,
                         max_positions=max(args.windows))
    vocab = model.config.vocab_size
    rows: list[dict] = []
    result = {**provenance("bench_long_context.py", args, args.device), "shape": args.shape,
              "layers": args.layers, "dtype": args.dtype, "head_rows": HEAD_ROWS, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for window in args.windows:
        ids = torch.randint(0, vocab, (1, window), device=args.device)
        dense = None
        for name, make in cases(model, window, args.paths, window <= args.materialised).items():
            if args.cases and name != "dense" and name.split(" ")[0] not in args.cases:
                continue
            row = {"window": window, "case": name, **measure(model, ids, make, args.repeats, args.device)}
            dense = row["seconds"] if name == "dense" else dense
            row["vs_dense"] = row["seconds"] / dense if row["seconds"] and dense else None
            rows.append(row)
            print(json.dumps(row), flush=True)
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")  # what a cut-off run leaves
    layers = args.layers or "all"
    print(f"\n{args.shape} ({layers} layers) {args.dtype} on {args.device}, one window per pass")
    print(f"{'window':>7s} {'case':32s} {'s/pass':>8s} {'x dense':>8s} {'peak GiB':>9s} {'NLL/token':>10s}")
    for r in rows:
        seconds, ratio, peak, nll = (cell(r, r[key], fmt) for key, fmt in (
            ("seconds", ".3f"), ("vs_dense", ".2f"), ("peak_gib", ".2f"), ("nll", ".6f")))
        print(f"{r['window']:7d} {r['case']:32s} {seconds:>8s} {ratio:>8s} {peak:>9s} {nll:>10s}")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
