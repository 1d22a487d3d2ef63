"""Decode-exact evaluator vs a dense evaluation of the same tokens (issue 7, section 5).

Times, on random token windows and a random-weight model of a real shape (speed does not depend on
the weights), one teacher-forced forward pass + NLL per batch of windows:
``dense`` (the model's own attention, what a plain perplexity evaluation runs) and the evaluator's
run attention (``headq_core.evaluation.run_attention.RunAttention``, the code ``evaluate`` runs per
window) for
2-bit keys, 2-bit keys + HeadQ r8, full-KV 2-bit + HeadQ + online A², and 2-bit keys with per-head
metrics. Reports each as a ratio to dense (target: at most 2x) and dense's achieved FLOP/s as a
share of the FLOP floor (matmul FLOPs of the forward pass / the matmul throughput measured in the
same run; target: at least 45%). Medians of ``--repeats`` timings after a warm-up.

    .venv/bin/python benchmarks/bench_evaluator.py --shape smollm2 --windows 2 --window 512
    python3 benchmarks/bench_evaluator.py --shape llama3-8b --device cuda --dtype bfloat16 \\
        --windows 8 --window 1024 --out $OUT/evaluator_h200.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from bench_timing import provenance, wall_ms
from gpu_shapes import KEY, VALUE
from random_model import SHAPES, random_llama
from transformers import LlamaForCausalLM

from headq_core.config import HeadQConfig, RunSpec, ValuePolicyConfig
from headq_core.evaluation.head_accumulator import HeadAccumulator
from headq_core.evaluation.run_attention import RunAttention
from headq_core.models.adapter import attention_handler

HQ8 = HeadQConfig(rank=8, basis="random", side_bits=8)
RUNS = {
    "k2": RunSpec("k2", key=KEY),
    "k2+hq8": RunSpec("k2+hq8", key=KEY, headq=HQ8),
    "kv2+hq8+a2": RunSpec("kv2+hq8+a2", key=KEY, value=VALUE, headq=HQ8, value_policy=ValuePolicyConfig()),
}


def forward_flops(model: LlamaForCausalLM, batch: int, window: int) -> float:
    """Matmul FLOPs of one forward pass: 2 x (non-embedding weights incl. the LM head) per token,
    plus causal attention (QK^T and AV: 2 x 2 x heads x d x window²/2 per layer and sequence)."""
    cfg = model.config
    weights = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and p.dim() == 2)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    attention = cfg.num_hidden_layers * 2 * cfg.num_attention_heads * head_dim * window * window
    return batch * (2.0 * weights * window + attention)


def matmul_flops_per_s(dtype: torch.dtype, device: str, n: int) -> float:
    """Measured throughput of an n x n x n matmul in ``dtype`` (the same run's FLOP ceiling)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2.0 * n**3 / median_s(lambda: a @ b, 5, device)


def median_s(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median seconds of ``repeats`` synchronised calls of ``fn`` after one warm-up call."""
    fn()
    return statistics.median(wall_ms(fn, device) for _ in range(repeats)) / 1e3


def nll_step(model: LlamaForCausalLM, ids: torch.Tensor, handler: RunAttention | None) -> float:
    """One teacher-forced pass and its summed NLL, as ``headq_core.evaluation.evaluate`` does per batch."""
    with torch.no_grad():
        if handler is None:
            logits = model(ids, use_cache=False).logits
        else:
            with attention_handler(model, handler):
                logits = model(ids, use_cache=False).logits
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum"
        ).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--windows", type=int, default=2, help="windows per forward pass (batch)")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-n", type=int, default=None, help="size of the ceiling matmul")
    parser.add_argument("--out", default="benchmarks/results/evaluator_cpu.json")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    cuda = args.device.startswith("cuda")
    model = random_llama(args.shape, dtype=dtype, device=args.device)
    info = model.config
    ids = torch.randint(0, info.vocab_size, (args.windows, args.window), device=args.device)
    kv, layers = info.num_key_value_heads, info.num_hidden_layers
    metrics = HeadAccumulator(layers, info.num_attention_heads, kv)
    cases: dict[str, RunAttention | None] = {"dense": None}
    cases.update({name: RunAttention(run) for name, run in RUNS.items()})
    cases["k2 + metrics"] = RunAttention(RUNS["k2"], sink=metrics.add)
    seconds = {name: median_s(lambda h=h: nll_step(model, ids, h), args.repeats, args.device)
               for name, h in cases.items()}
    ceiling = matmul_flops_per_s(dtype, args.device, args.matmul_n or (8192 if cuda else 2048))
    flops = forward_flops(model, args.windows, args.window)
    dense_share = flops / seconds["dense"] / ceiling
    rows = [{"case": name, "seconds": s, "vs_dense": s / seconds["dense"],
             "tokens_per_s": args.windows * args.window / s} for name, s in seconds.items()]
    print(f"{args.shape} {args.dtype} on {args.device}: {args.windows} x {args.window} tokens per pass")
    print(f"{'case':16s} {'s/pass':>9s} {'x dense':>8s} {'tokens/s':>10s}")
    for r in rows:
        print(f"{r['case']:16s} {r['seconds']:9.3f} {r['vs_dense']:8.2f} {r['tokens_per_s']:10.0f}")
    print(f"dense: {flops / seconds['dense'] / 1e12:.3f} TFLOP/s = {dense_share:.1%} of the measured "
          f"matmul ceiling {ceiling / 1e12:.3f} TFLOP/s")
    result = {
        **provenance("bench_evaluator.py", args, args.device), "shape": args.shape, "dtype": args.dtype,
        "windows": args.windows, "window": args.window, "forward_flops": flops,
        "matmul_ceiling_flops_per_s": ceiling, "dense_share_of_ceiling": dense_share, "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
