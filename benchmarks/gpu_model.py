"""Whole-cache sections of ``bench_gpu``: a full decode step of a model with the quantized cache vs
``DynamicCache``, and the bytes the cache allocates vs the effective-bits formula. Ratios of bytes
compare with the model's own cache (``DynamicCache(config=...)``, sliding layers bounded), never with
a full-length cache of every layer."""

from __future__ import annotations

import contextlib
import statistics

import torch
from bench_timing import GIB, nbytes, wall_ms
from gpu_shapes import HEADQ, HIDDEN, HKV, HQ, KEY, LAYERS, VALUE, D

from headq_core.method.budget import effective_bits
from headq_core.method.schedule import quantized_count
from headq_core.models.calls import cache_kwargs
from headq_core.runtime.footprint import model_cache_bytes, quantized_cache_bytes
from headq_core.runtime.kernels import encode
from headq_core.runtime.layer_types import layer_windows


def bench_memory(device: str, ctx: int, budget_gib: float) -> dict:
    """Bytes one layer's cache really allocates vs the budget formula, and the longest context that
    fits a fixed budget for all 32 layers (B=1), quantized vs bf16."""
    n_q = quantized_count(ctx, KEY)
    k = torch.randn(1, HKV, ctx, D, device=device).bfloat16()
    v = torch.randn_like(k)
    u = torch.linalg.qr(torch.randn(HKV, D, HEADQ.rank, device=device))[0]
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    enc = encode(k[:, :, :n_q], v[:, :, :n_q], KEY, VALUE, basis=u)
    kr, vr = k[:, :, n_q:].clone(), v[:, :, n_q:].clone()
    alloc = torch.cuda.memory_allocated() - before if device == "cuda" else enc.nbytes() + nbytes(kr, vr)
    elems = HKV * ctx * D
    formula = (effective_bits(KEY, D, HEADQ, seq_len=ctx) + effective_bits(VALUE, D, seq_len=ctx)) * elems / 8
    per_tok = enc.nbytes() / n_q
    fixed = nbytes(kr, vr)
    budget = budget_gib * GIB / LAYERS
    ctx_bf16 = int(budget // (2 * HKV * D * 2))
    ctx_q = int((budget - fixed) // per_tok // KEY.group_size * KEY.group_size) + kr.shape[2]
    return {
        "context": ctx,
        "allocated_bytes": alloc,
        "tensor_bytes": enc.nbytes() + fixed,
        "formula_bytes": formula,
        "allocated_over_formula": alloc / formula,
        "budget_gib_all_layers": budget_gib,
        "max_context_bf16": ctx_bf16,
        "max_context_headq": ctx_q,
        "context_ratio": ctx_q / ctx_bf16,
    }


def graph_ms(step, replays: int = 20) -> float:
    """Median ms of one replay of ``step`` captured in a CUDA graph, warmed up on a side stream first
    (each warm-up and the capture advance the cache one token; replays redo the captured step)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    times = []
    for _ in range(replays + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times[3:])


def _llama(layers: int, device: str, ctx: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    gpu = device == "cuda"
    hidden, heads, kv, vocab = (HIDDEN, HQ, HKV, 128256) if gpu else (512, 4, 1, 1000)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=14336 if gpu else 1024, num_hidden_layers=layers,
                      head_dim=D, num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                      max_position_embeddings=2 * ctx)  # fmt: skip
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    return model, cfg


def model_row(ctx: int, device: str, batch: int = 1, layers: int | None = None, chunk: int = 4096) -> dict:
    """One decode step of a random-weight Llama-3-8B-shaped model (``layers`` of its 32; a 2-layer toy
    on the CPU) after a ``ctx`` prefill (chunks of ``chunk`` tokens, into a DynamicCache): the
    DynamicCache step vs HeadQCache (the same keys and values, quantized by its own update) attached
    to the model, so that its decode steps attend with the decode kernel on CUDA (``headq``: tensor
    cores where that kernel takes the layout, else Triton), and the same cache reading the dequantized
    cache densely (``headq_dense``, B = 1 only). Host-clock medians of 6 eager steps after 2, and on
    CUDA the replay of one step captured in a CUDA graph."""
    from transformers import DynamicCache

    from headq_core.runtime.cache import HeadQCache

    gpu = device == "cuda"
    layers = layers or (LAYERS if gpu else 2)
    model, cfg = _llama(layers, device, ctx)
    kv = cfg.num_key_value_heads
    basis = torch.linalg.qr(torch.randn(layers, kv, D, HEADQ.rank, device=device))[0]
    ids = torch.randint(0, cfg.vocab_size, (batch, ctx + 16), device=device)
    row: dict = {"context": ctx, "batch": batch, "layers": layers, "elements": batch * layers * kv * ctx * D}
    dyn = DynamicCache(config=cfg)
    with torch.no_grad():
        for at in range(0, ctx, chunk):
            part = ids[:, at : min(ctx, at + chunk)]
            model(part, use_cache=True, logits_to_keep=1, **cache_kwargs(model, dyn))

    def headq(kernel: str):
        cache = HeadQCache(layers, KEY, VALUE, HEADQ, basis, config=cfg, check_steps=False)  # no sync a step
        for i, layer in enumerate(cache.quant_layers):
            layer.kernel = kernel
            layer.update(dyn.layers[i].keys, dyn.layers[i].values)  # the prefill's keys and values
        return cache

    caches = {"headq": lambda: headq("auto"), "dynamic": lambda: dyn}
    if batch == 1:
        caches["headq_dense"] = lambda: headq("off")
    geometry = dict(batch=batch, kv_heads=kv, head_dim=D)
    row["model_cache_bytes"] = model_cache_bytes(layer_windows(cfg), ctx + 8, **geometry)  # bf16
    for name, make in caches.items():
        cache = None
        try:
            cache, times, pos = make(), [], [ctx]
            attach = cache.attached(model) if name != "dynamic" else contextlib.nullcontext()

            def step(cache=cache, pos=pos):
                nxt = ids[:, pos[0] : pos[0] + 1]
                pos[0] += 1
                return model(nxt, logits_to_keep=1, **cache_kwargs(model, cache))

            with torch.no_grad(), attach:
                for _ in range(8):
                    times.append(wall_ms(step, device))
                row[f"{name}_step_ms"] = statistics.median(times[2:])
                if name == "headq":
                    row["headq_cache_bytes"] = cache.nbytes()
                    held = ctx + 8  # after the eager steps
                    row["formula_bytes"] = quantized_cache_bytes(layer_windows(cfg), held, KEY, VALUE, HEADQ,
                                                                 **geometry)
                    row["bytes_over_formula"] = row["headq_cache_bytes"] / row["formula_bytes"]
                    row["x_smaller_than_model_cache"] = row["model_cache_bytes"] / row["headq_cache_bytes"]
                if gpu and name != "headq_dense":
                    row[f"{name}_graph_step_ms"] = graph_ms(step)
                if name != "dynamic":
                    cache.check()  # what the steps recorded (nothing, on these inputs)
        except Exception as exc:  # noqa: BLE001 - reported in the results, the run goes on
            row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            del cache  # the quantized caches go; ``dyn`` stays for the next one
            if gpu:
                torch.cuda.empty_cache()
    for name in ("headq", "headq_dense", "headq_graph"):
        base = "dynamic_graph_step_ms" if name == "headq_graph" else "dynamic_step_ms"
        mine = "headq_graph_step_ms" if name == "headq_graph" else f"{name}_step_ms"
        if base in row and mine in row:
            row[f"{name}_time_ratio"] = row[mine] / row[base]
    return row
