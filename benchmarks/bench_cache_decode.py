"""Decode steps with the quantized cache (``HeadQCache``) vs ``DynamicCache``, reference path.

A random-weight model of the SmolLM2 shape (``--layers`` of its 30 layers; speed does not depend
on the weights) prefills ``context`` tokens, then decodes ``--steps`` tokens one by one; each step
is timed (host clock, device synchronised). Caches: ``dynamic`` (transformers' own), ``kv2`` (keys
2-bit per-channel G32, values 2-bit per-token G32, residual 128) and ``kv2+a2`` (the same with the
online A² value policy, which settles the leaving value token from each step's attention). Every
cache is built from the model config, as the model's own cache is (``DynamicCache(config=...)``), so
cache bytes compare with what the model really keeps. Prints a table of median step times and
cache bytes and writes JSON. bench_sliding_cache.py does the same for a sliding-window model.

    .venv/bin/python benchmarks/bench_cache_decode.py --contexts 1024 4096 \
        --out benchmarks/results/cache_decode_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
from bench_timing import provenance, wall_ms
from gpu_shapes import KEY, VALUE
from random_model import random_llama
from transformers import DynamicCache, LlamaForCausalLM

from headq_core.config import ValuePolicyConfig
from headq_core.models.calls import cache_kwargs
from headq_core.runtime.cache import HeadQCache

CACHES = {
    "dynamic": lambda cfg: DynamicCache(config=cfg),
    "kv2": lambda cfg: HeadQCache(cfg.num_hidden_layers, KEY, VALUE, config=cfg),
    "kv2+a2": lambda cfg: HeadQCache(cfg.num_hidden_layers, KEY, VALUE, value_policy=ValuePolicyConfig(),
                                     config=cfg),
}


def step_times(model: LlamaForCausalLM, name: str, context: int, steps: int, device: str) -> dict:
    """Prefill ``context`` tokens into a fresh cache, then time ``steps`` single-token steps."""
    cache = CACHES[name](model.config)
    ids = torch.randint(0, model.config.vocab_size, (1, context + steps), device=device)
    attached = cache.attached(model) if name != "dynamic" else contextlib.nullcontext()
    times = []
    with torch.no_grad(), attached:
        start = time.perf_counter()
        model(ids[:, :context], use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))
        prefill_s = time.perf_counter() - start
        for i in range(steps):
            nxt = ids[:, context + i: context + i + 1]
            times.append(wall_ms(lambda: model(nxt, logits_to_keep=1, **cache_kwargs(model, cache)),  # noqa: B023
                                 device))
    row = {"cache": name, "context": context, "prefill_s": prefill_s, "step_ms": statistics.median(times)}
    row["cache_bytes"] = (cache.nbytes() if isinstance(cache, HeadQCache)
                          else sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = random_llama("smollm2", layers=args.layers, device=args.device)
    rows = [step_times(model, name, ctx, args.steps, args.device) for ctx in args.contexts for name in CACHES]
    for row in rows:
        dense = next(r for r in rows if r["context"] == row["context"] and r["cache"] == "dynamic")
        row["vs_dynamic"] = row["step_ms"] / dense["step_ms"]
        row["bytes_vs_dynamic"] = row["cache_bytes"] / dense["cache_bytes"]
    print(f"SmolLM2 shape, {args.layers} layers, {args.device}: median of {args.steps} decode steps")
    print(f"{'context':>8} {'cache':10} {'prefill s':>10} {'step ms':>9} {'x dynamic':>10} "
          f"{'x dyn bytes':>11}")
    for r in rows:
        print(f"{r['context']:>8} {r['cache']:10} {r['prefill_s']:10.2f} {r['step_ms']:9.2f} "
              f"{r['vs_dynamic']:10.2f} {r['bytes_vs_dynamic']:11.3f}")
    if args.out:
        args.out.write_text(json.dumps({**provenance("bench_cache_decode.py", args, args.device),
                                        "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")

if __name__ == "__main__":
    main()
