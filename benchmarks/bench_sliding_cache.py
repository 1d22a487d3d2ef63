"""Cache bytes and decode step time on a sliding-window model: HeadQCache vs DynamicCache(config=...).

A random-weight model of Gemma-3-27B shapes (62 layers, 5 sliding of 1,024 tokens for each full one,
32 query / 16 KV heads, head_dim 128, bf16; speed and bytes do not depend on the weights) prefills
``context`` tokens in chunks of ``--chunk`` (so no [context, context] mask is built), then decodes
``--steps`` tokens one by one, B = 1. Caches: ``dynamic`` (transformers' own, sliding layers keep
their window), ``kv2`` (keys 2-bit per_channel G32, values 2-bit per_token G32, residual 128; sliding
layers bounded and quantized) and ``kv2_fp_sliding`` (sliding layers bounded, full precision). The
quantized caches decode attached to the model (the Triton kernel on CUDA on every layer, sliding ones
from their window start).
Bytes are compared with the model's own cache, never with a full-length one. ``--tiny`` runs a 6-layer
toy of the same pattern (window 128) on the CPU.

    .venv/bin/python benchmarks/bench_sliding_cache.py --device cuda --contexts 32768 131072 \
        --out benchmarks/results/sliding_cache_gpu.json
    .venv/bin/python benchmarks/bench_sliding_cache.py --tiny --contexts 1024 4096
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_timing import provenance, wall_ms
from gpu_shapes import KEY, VALUE
from transformers import AutoModelForCausalLM, DynamicCache, Gemma3TextConfig

from headq_core.models.calls import cache_kwargs
from headq_core.runtime.cache import HeadQCache
from headq_core.runtime.footprint import model_cache_bytes, quantized_cache_bytes

# layers, hidden, q heads, kv heads, head_dim, intermediate, vocab, window
GEMMA3_27B = (62, 5376, 32, 16, 128, 21504, 262208, 1024)
TINY = (6, 64, 4, 2, 64, 128, 1000, 128)
CACHES = ("dynamic", "kv2", "kv2_fp_sliding")


def gemma3_model(shape: tuple, device: str, max_positions: int):
    """An eval-mode bf16 random Gemma-3 text model (every 6th layer full attention), seed 0."""
    layers, hidden, heads, kv, d, inter, vocab, window = shape
    types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
    cfg = Gemma3TextConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                           num_key_value_heads=kv, head_dim=d, intermediate_size=inter, vocab_size=vocab,
                           sliding_window=window, layer_types=types, max_position_embeddings=max_positions,
                           query_pre_attn_scalar=d)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    torch.set_default_dtype(torch.float32)
    return model


def make_cache(name: str, config):
    if name == "dynamic":
        return DynamicCache(config=config)
    sliding = "quantize" if name == "kv2" else "full_precision"
    return HeadQCache(config.num_hidden_layers, KEY, VALUE, config=config, sliding_layers=sliding)


def dense_bytes(cache: DynamicCache) -> int:
    """Bytes of the keys and values a DynamicCache holds."""
    total = 0
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is not None and values is not None:
            total += keys.nbytes + values.nbytes
    return total


def run_cache(model, name: str, context: int, steps: int, chunk: int, device: str) -> dict:
    """Chunked prefill of ``context`` tokens into a fresh cache, then ``steps`` timed decode steps."""
    cfg = model.config
    cache = make_cache(name, cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, context + steps), device=device)
    kw = cache_kwargs(model, cache)
    times = []
    with torch.no_grad():
        start = time.perf_counter()
        for c0 in range(0, context, chunk):
            model(ids[:, c0 : min(context, c0 + chunk)], use_cache=True, logits_to_keep=1, **kw)
        prefill_s = time.perf_counter() - start
        attached = cache.attached(model) if isinstance(cache, HeadQCache) else torch.no_grad()
        with attached:
            for i in range(steps):
                nxt = ids[:, context + i : context + i + 1]
                times.append(wall_ms(lambda: model(nxt, use_cache=True, logits_to_keep=1, **kw),  # noqa: B023
                                     device))
            if isinstance(cache, HeadQCache):  # layers whose decode steps read the packed cache
                probe = torch.zeros(1, cfg.num_key_value_heads, 1, cfg.head_dim, device=device)
                kernel_layers = sum(layer._kernel_reads(probe) for layer in cache.quant_layers)
    row = {"cache": name, "context": context, "prefill_s": prefill_s,
           "step_ms": statistics.median(times[2:] if steps > 4 else times)}
    if isinstance(cache, HeadQCache):
        row["cache_bytes"] = cache.nbytes()
        row["bytes_by_layer_type"] = cache.nbytes_by_layer_type()
        geometry = dict(batch=1, kv_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim)
        sliding = "quantize" if name == "kv2" else "full_precision"
        row["formula_bytes"] = quantized_cache_bytes(cache.windows, context + steps, KEY, VALUE,
                                                     sliding_layers=sliding, **geometry)
        row["model_cache_formula_bytes"] = model_cache_bytes(cache.windows, context + steps, **geometry)
        row["kernel_layers"] = kernel_layers
        cache.check()  # what the decode steps recorded
    else:
        row["cache_bytes"] = dense_bytes(cache)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--layers", type=int, help="fewer layers than the shape's (same pattern)")
    parser.add_argument("--tiny", action="store_true", help="a 6-layer toy (window 128) for the CPU")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    shape = TINY if args.tiny else GEMMA3_27B
    if args.layers:
        shape = (args.layers, *shape[1:])
    model = gemma3_model(shape, args.device, max(args.contexts) + args.steps + 8)
    rows = [run_cache(model, name, ctx, args.steps, args.chunk, args.device)
            for ctx in args.contexts for name in CACHES]
    for row in rows:
        dense = next(r for r in rows if r["context"] == row["context"] and r["cache"] == "dynamic")
        row["bytes_vs_dynamic"] = row["cache_bytes"] / dense["cache_bytes"]
        row["step_vs_dynamic"] = row["step_ms"] / dense["step_ms"]
    print(f"Gemma-3 pattern {shape} on {args.device}: B=1, median decode step of {args.steps}")
    print(f"{'context':>8} {'cache':15} {'prefill s':>10} {'step ms':>9} {'x dyn time':>10} "
          f"{'MiB':>9} {'x dyn bytes':>11}")
    for r in rows:
        print(f"{r['context']:>8} {r['cache']:15} {r['prefill_s']:10.2f} {r['step_ms']:9.2f} "
              f"{r['step_vs_dynamic']:10.2f} {r['cache_bytes'] / 2**20:9.2f} {r['bytes_vs_dynamic']:11.3f}")
    if args.out:
        args.out.write_text(json.dumps({**provenance("bench_sliding_cache.py", args, args.device),
                                        "shape": shape, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
