"""Speed of the packed-cache kernels against bf16 baselines, Llama-3-8B shapes, random weights.

Every figure is a ratio measured side by side in the same run: medians of repeated timings with CUDA
events after warm-up (``triton.testing.do_bench``, which also flushes the L2 between repeats; and
the same work replayed from a CUDA graph). Each timed call runs ``L`` layers, each with its own
cache, so no layer reads another's data from the L2. Sections: decode attention vs SDPA, encode
throughput, one attention block per layer (projections + attention), memory vs the effective-bits
formula. ``--device cpu`` times the reference path on small shapes instead.

    python benchmarks/bench_gpu.py --out benchmarks/results/gpu_h200.json
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --out benchmarks/results/gpu_cpu_reference.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headq_core.budget import effective_bits  # noqa: E402
from headq_core.config import HeadQConfig, QuantConfig  # noqa: E402
from headq_core.kernels import decode_attention, encode  # noqa: E402
from headq_core.schedule import quantized_count  # noqa: E402

HQ, HKV, D, LAYERS, HIDDEN = 32, 8, 128, 32, 4096
KEY = QuantConfig(bits=2, axis="per_channel", group_size=32, residual=128)
VALUE = QuantConfig(bits=2, axis="per_token", group_size=32, residual=128)
HEADQ = HeadQConfig(rank=8, side_bits=8)
GIB = 1 << 30
TUNE = ((32, 4), (64, 4), (64, 8), (128, 4), (128, 8))
BACKENDS = (
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.MATH,
)


def median_ms(fn, device: str, graph: bool = False) -> float:
    """Median time of ``fn`` in ms: CUDA events (eager or graph replay) on GPU, perf_counter on CPU."""
    if device == "cuda":
        import triton.testing

        if graph:
            return triton.testing.do_bench_cudagraph(fn, rep=200, return_mode="median")
        return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
    fn()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth(device: str) -> float:
    """Device-to-device copy bandwidth in GB/s, bytes read plus written, 2 GiB buffers."""
    src = torch.randint(
        0, 255, (2 * GIB if device == "cuda" else GIB // 8,), dtype=torch.uint8, device=device
    )
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() / ms / 1e6


def nbytes(*ts: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


class Layers:
    """``n`` layers of one (batch, context) cache: bf16 K/V and their encodings (+ residual window)."""

    def __init__(self, batch: int, ctx: int, n: int, device: str) -> None:
        self.batch, self.ctx, self.n_q = batch, ctx, quantized_count(ctx, KEY)
        self.q, self.k, self.v, self.enc, self.kr, self.vr, self.u = [], [], [], [], [], [], []
        for _ in range(n):
            k = (torch.randn(batch, HKV, ctx, D, device=device) + 2).bfloat16()
            v = torch.randn(batch, HKV, ctx, D, device=device).bfloat16()
            u = torch.linalg.qr(torch.randn(HKV, D, HEADQ.rank, device=device))[0]
            self.enc.append(encode(k[:, :, : self.n_q], v[:, :, : self.n_q], KEY, VALUE, basis=u))
            self.kr.append(k[:, :, self.n_q :].contiguous())
            self.vr.append(v[:, :, self.n_q :].contiguous())
            self.q.append(torch.randn(batch, HQ, 1, D, device=device).bfloat16())
            self.k.append(k)
            self.v.append(v)
            self.u.append(u)

    def sdpa(self, i: int, q: torch.Tensor | None = None) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            self.q[i] if q is None else q, self.k[i], self.v[i], enable_gqa=True
        )

    def quant(self, i: int, q: torch.Tensor | None = None) -> torch.Tensor:
        return decode_attention(
            self.q[i] if q is None else q, self.enc[i], self.kr[i], self.vr[i], basis=self.u[i]
        )

    def bytes_quant(self, i: int) -> int:
        return self.enc[i].nbytes() + nbytes(self.kr[i], self.vr[i], self.q[i], self.q[i])

    def bytes_bf16(self, i: int) -> int:
        return nbytes(self.k[i], self.v[i], self.q[i], self.q[i])


def layer_count(batch: int, ctx: int, device: str, cap_gib: float) -> int:
    per_layer = 2 * batch * HKV * ctx * D * 2 * 1.25
    return max(1, min(LAYERS if device == "cuda" else 2, int(cap_gib * GIB // per_layer)))


def modes(device: str) -> tuple[str, ...]:
    return ("eager", "graph") if device == "cuda" else ("eager",)


def decode_row(batch: int, ctx: int, device: str, copy_gbs: float, cap_gib: float) -> dict:
    """Decode attention over ``n`` layers: every SDPA backend that runs vs the Triton kernel."""
    n = layer_count(batch, ctx, device, cap_gib)
    lay = Layers(batch, ctx, n, device)
    row = {
        "batch": batch,
        "context": ctx,
        "layers_timed": n,
        "quantized_tokens": lay.n_q,
        "byte_ratio": lay.bytes_bf16(0) / lay.bytes_quant(0),
        "copy_GBps": copy_gbs,
    }
    backends = BACKENDS
    for mode in modes(device):
        graph = mode == "graph"
        by_backend = {}
        for backend in backends:
            if backend == SDPBackend.MATH and by_backend:
                continue  # the unfused fallback only when no fused backend runs
            try:
                with sdpa_kernel(backend):
                    by_backend[backend] = (
                        median_ms(lambda: [lay.sdpa(i) for i in range(n)], device, graph) / n
                    )
            except RuntimeError:
                continue
        backends = tuple(by_backend)
        best = min(by_backend, key=by_backend.get)
        t_sdpa = by_backend[best]
        t_q = median_ms(lambda: [lay.quant(i) for i in range(n)], device, graph) / n
        row[mode] = {
            "sdpa_ms": t_sdpa,
            "sdpa_backend": best.name,
            "sdpa_ms_by_backend": {k.name: v for k, v in by_backend.items()},
            "headq_ms": t_q,
            "speedup": t_sdpa / t_q,
            "sdpa_GBps": lay.bytes_bf16(0) / t_sdpa / 1e6,
            "headq_GBps": lay.bytes_quant(0) / t_q / 1e6,
        }
    return row


def bench_encode(shapes, device: str, copy_gbs: float) -> list[dict]:
    rows = []
    for batch, n_tok in shapes:
        n = 4 if device == "cuda" else 1
        ks = [torch.randn(batch, HKV, n_tok, D, device=device).bfloat16() for _ in range(n)]
        vs = [torch.randn(batch, HKV, n_tok, D, device=device).bfloat16() for _ in range(n)]
        u = torch.linalg.qr(torch.randn(HKV, D, HEADQ.rank, device=device))[0]
        ms = median_ms(lambda: [encode(ks[i], vs[i], KEY, VALUE, basis=u) for i in range(n)], device) / n  # noqa: B023
        moved = nbytes(ks[0], vs[0]) + encode(ks[0], vs[0], KEY, VALUE, basis=u).nbytes()
        rows.append(
            {
                "batch": batch,
                "tokens": n_tok,
                "ms": ms,
                "GBps": moved / ms / 1e6,
                "fraction_of_copy": moved / ms / 1e6 / copy_gbs,
            }
        )
    return rows


def tune_row(batch: int, ctx: int, device: str, cap_gib: float) -> dict:
    """Graph-replay time of the decode kernel per (tokens per loop step, warps) variant."""
    from headq_core.kernels.triton_decode import decode_attention_triton

    n = layer_count(batch, ctx, device, cap_gib)
    lay = Layers(batch, ctx, n, device)
    row = {"batch": batch, "context": ctx, "ms": {}}
    for block, warps in TUNE:

        def run(block=block, warps=warps):
            for i in range(n):
                decode_attention_triton(
                    lay.q[i],
                    lay.enc[i],
                    lay.kr[i],
                    lay.vr[i],
                    lay.u[i],
                    D**-0.5,
                    1,
                    block=block,
                    num_warps=warps,
                )

        row["ms"][f"block{block}_warps{warps}"] = median_ms(run, device, graph=True) / n
    return row


def block_row(batch: int, ctx: int, device: str, cap_gib: float, sdpa_backend: str) -> dict:
    """One attention block per layer (qkv projection, RoPE on q, attention, o projection) over ``n``
    layers with their own weights; the bf16 side uses ``sdpa_backend``."""
    n = layer_count(batch, ctx, device, cap_gib)
    lay = Layers(batch, ctx, n, device)
    wqkv = [torch.randn(HIDDEN + 2 * HKV * D, HIDDEN, device=device).bfloat16() * 0.02 for _ in range(n)]
    wo = [torch.randn(HIDDEN, HIDDEN, device=device).bfloat16() * 0.02 for _ in range(n)]
    x0 = torch.randn(batch, 1, HIDDEN, device=device).bfloat16()
    ang = torch.arange(D // 2, device=device) * 1e-3 * ctx
    cos, sin = ang.cos().repeat(2).bfloat16(), ang.sin().repeat(2).bfloat16()

    def step(attn):
        x = x0
        for i in range(n):
            q = (x @ wqkv[i].T)[..., :HIDDEN].view(batch, 1, HQ, D).transpose(1, 2)
            q = q * cos + torch.cat([-q[..., D // 2 :], q[..., : D // 2]], -1) * sin
            x = attn(i, q).transpose(1, 2).reshape(batch, 1, HIDDEN) @ wo[i].T
        return x

    row = {
        "batch": batch,
        "context": ctx,
        "layers_timed": n,
        "sdpa_backend": sdpa_backend,
        "note": "attention block of each layer, not a full model step (no HeadQCache measured)",
    }
    for mode in modes(device):
        graph = mode == "graph"
        with sdpa_kernel(getattr(SDPBackend, sdpa_backend)):
            t_b = median_ms(lambda: step(lay.sdpa), device, graph) / n
        t_q = median_ms(lambda: step(lay.quant), device, graph) / n
        row[mode] = {"bf16_ms": t_b, "headq_ms": t_q, "time_ratio": t_q / t_b}
    return row


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


def print_table(res: dict) -> None:
    print(f"\n{res['device']}  copy {res['copy_GBps']:.0f} GB/s")
    for r in res["decode"]:
        for m in ("eager", "graph"):
            if m in r:
                e = r[m]
                print(
                    f"decode B={r['batch']:>2} ctx={r['context']:>6} {m:5}: sdpa[{e['sdpa_backend'][:5]}] "
                    f"{e['sdpa_ms'] * 1e3:8.1f} us "
                    f"headq {e['headq_ms'] * 1e3:8.1f} us  x{e['speedup']:.2f}  ({e['headq_GBps']:.0f} vs "
                    f"{e['sdpa_GBps']:.0f} GB/s; byte ratio {r['byte_ratio']:.2f})"
                )
    for r in res["encode"]:
        print(
            f"encode B={r['batch']} N={r['tokens']}: {r['ms'] * 1e3:.1f} us {r['GBps']:.0f} GB/s "
            f"= {100 * r['fraction_of_copy']:.0f}% of copy"
        )
    for r in res["block"]:
        for m in ("eager", "graph"):
            if m in r:
                e = r[m]
                print(
                    f"block  B={r['batch']} ctx={r['context']:>6} {m:5}: bf16 {e['bf16_ms'] * 1e3:8.1f} us "
                    f"headq {e['headq_ms'] * 1e3:8.1f} us  time ratio {e['time_ratio']:.2f}"
                )
    for r in res.get("tune", []):
        best = min(r["ms"], key=r["ms"].get)
        print(
            f"tune   B={r['batch']} ctx={r['context']}: "
            + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in r["ms"].items())
            + f" us; best {best}"
        )
    m = res["memory"]
    print(
        f"memory ctx={m['context']}: allocated/formula {m['allocated_over_formula']:.3f}; "
        f"max context in {m['budget_gib_all_layers']} GiB: {m['max_context_headq']} vs {m['max_context_bf16']} "
        f"(x{m['context_ratio']:.2f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cap-gib", type=float, default=32.0, help="bf16 cache bytes per timed shape")
    args = ap.parse_args()
    dev = args.device
    torch.manual_seed(0)
    gpu = dev == "cuda"
    decode_shapes = [(1, 4096), (1, 32768), (8, 32768), (16, 131072)] if gpu else [(1, 1024), (1, 4096)]
    copy_gbs = copy_bandwidth(dev)
    res = {
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "copy_GBps": copy_gbs,
        "config": {
            "key": str(KEY),
            "value": str(VALUE),
            "headq": str(HEADQ),
            "q_heads": HQ,
            "kv_heads": HKV,
            "head_dim": D,
        },
    }
    if gpu:
        import triton

        res["triton"] = triton.__version__
    res["decode"] = [decode_row(b, c, dev, copy_gbs, args.cap_gib) for b, c in decode_shapes]
    res["encode"] = bench_encode([(1, 32768), (8, 32768)] if gpu else [(1, 1024)], dev, copy_gbs)
    best = {r["context"]: r["eager"]["sdpa_backend"] for r in res["decode"] if r["batch"] == 1}
    res["block"] = [block_row(1, c, dev, args.cap_gib, best[c]) for c in ((4096, 32768) if gpu else (1024,))]
    if gpu:
        res["tune"] = [tune_row(b, c, dev, args.cap_gib) for b, c in ((1, 32768), (8, 32768))]
    res["memory"] = bench_memory(dev, 32768 if gpu else 4096, 16.0)
    print_table(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
