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
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_timing import GIB, copy_bandwidth, median_ms, nbytes  # noqa: E402
from gpu_model import bench_memory, model_row  # noqa: E402
from gpu_shapes import HEADQ, HIDDEN, HKV, HQ, KEY, LAYERS, VALUE, D  # noqa: E402

from headq_core.method.schedule import quantized_count  # noqa: E402
from headq_core.runtime.kernels import decode_attention, encode  # noqa: E402
from headq_core.runtime.kernels.triton_decode import decode_attention_triton  # noqa: E402

# headq: 2-bit K/V + HeadQ r8 (the tuned kernel); plain2 / plain4: the same kernel without a side
# code at 2 and 4 bits (what the side code and the bits cost); then the bf16 baselines
KINDS = ("headq", "plain2", "plain4", "sdpa_gqa", "sdpa_folded", "triton_bf16")
BASELINES = KINDS[3:]
# decode variants (ptx unpacking, block, warps, register cap), each compiled once; programs per SM
# only change the grid
COMPILED = ((True, 128, 4, 0), (True, 128, 2, 0), (True, 64, 2, 0), (True, 64, 4, 0), (True, 256, 4, 0),
            (False, 128, 4, 0))
SPLITS = ((2, 0), (4, 0), (8, 0), (16, 0), (8, 32), (16, 32))  # (programs per SM, max splits per head)
TUNE = tuple((*c, *sp) for c in COMPILED for sp in SPLITS)
TUNE_SHAPES = ((1, 4096), (1, 32768), (8, 32768))
KEY4, VALUE4 = replace(KEY, bits=4), replace(VALUE, bits=4)
ENCODE_SWEEP = ((1, 1), (2, 1), (4, 1), (8, 1), (4, 2), (8, 2), (16, 2), (8, 4), (16, 4))  # (groups, warps)


def variant(ptx: bool, blk: int, warps: int, maxnreg: int) -> str:
    return f"ptx{int(ptx)}_block{blk}_warps{warps}_regs{maxnreg or 'auto'}"
DECODE_CFG: dict = {}  # the tuned decode launch settings, chosen first on GPU
_B = SDPBackend
BACKENDS = (_B.FLASH_ATTENTION, _B.EFFICIENT_ATTENTION, _B.CUDNN_ATTENTION, _B.MATH)


class Layers:
    """``n`` layers of one (batch, context) cache: bf16 K/V and their encodings (+ residual window)."""

    def __init__(self, batch: int, ctx: int, n: int, device: str) -> None:
        self.batch, self.ctx, self.n_q = batch, ctx, quantized_count(ctx, KEY)
        self.q, self.k, self.v, self.enc, self.kr, self.vr, self.u = [], [], [], [], [], [], []
        self.plain: dict[str, list] = {"plain2": [], "plain4": []}
        for _ in range(n):
            k = (torch.randn(batch, HKV, ctx, D, device=device) + 2).bfloat16()
            v = torch.randn(batch, HKV, ctx, D, device=device).bfloat16()
            u = torch.linalg.qr(torch.randn(HKV, D, HEADQ.rank, device=device))[0]
            kq, vq = k[:, :, : self.n_q], v[:, :, : self.n_q]
            self.enc.append(encode(kq, vq, KEY, VALUE, basis=u))
            self.plain["plain2"].append(encode(kq, vq, KEY, VALUE))
            self.plain["plain4"].append(encode(kq, vq, KEY4, VALUE4))
            self.kr.append(k[:, :, self.n_q :].contiguous())
            self.vr.append(v[:, :, self.n_q :].contiguous())
            self.q.append(torch.randn(batch, HQ, 1, D, device=device).bfloat16())
            self.k, self.v, self.u = [*self.k, k], [*self.v, v], [*self.u, u]

    def attn(self, kind: str, i: int, q: torch.Tensor) -> torch.Tensor:
        """Attention of q [B, Hq, 1, d] over layer ``i``: the HeadQ cache or a bf16 baseline."""
        if kind == "headq":  # the tuned launch settings on GPU, the public entry point elsewhere
            args = (q, self.enc[i], self.kr[i], self.vr[i], self.u[i])
            if DECODE_CFG:
                return decode_attention_triton(*args, D**-0.5, 1, **DECODE_CFG)
            return decode_attention(*args)
        if kind in self.plain:
            args = (q, self.plain[kind][i], self.kr[i], self.vr[i], None)
            if DECODE_CFG:
                return decode_attention_triton(*args, D**-0.5, 1, **DECODE_CFG)
            return decode_attention(*args)
        if kind == "triton_bf16" and not q.is_cuda:
            return decode_attention(q, None, self.k[i], self.v[i])
        if kind == "triton_bf16":  # the same split-K kernel reading the bf16 cache (its tuned settings)
            return decode_attention_triton(q, None, self.k[i], self.v[i], None, D**-0.5, 1, block=64,
                                           num_warps=2, num_stages=2, per_sm=4, max_splits=0)
        if kind == "sdpa_gqa":
            return F.scaled_dot_product_attention(q, self.k[i], self.v[i], enable_gqa=True)
        b = q.shape[0]  # sdpa_folded: the query heads of a KV head as query positions (no mask)
        out = F.scaled_dot_product_attention(q.view(b, HKV, HQ // HKV, D), self.k[i], self.v[i])
        return out.view(b, HQ, 1, D)

    def bytes(self, kind: str) -> int:
        if kind == "headq" or kind in self.plain:
            enc = self.enc[0] if kind == "headq" else self.plain[kind][0]
            return enc.nbytes() + nbytes(self.kr[0], self.vr[0], self.q[0], self.q[0])
        return nbytes(self.k[0], self.v[0], self.q[0], self.q[0])


def layer_count(batch: int, ctx: int, device: str, cap_gib: float) -> int:
    per_layer = 2 * batch * HKV * ctx * D * 2 * 1.25  # bf16 K and V, plus the encoding
    return max(1, min(LAYERS if device == "cuda" else 2, int(cap_gib * GIB // per_layer)))


def modes(device: str) -> tuple[str, ...]:  # CUDA graphs only on GPU
    return ("eager", "graph") if device == "cuda" else ("eager",)


def time_kind(lay: Layers, kind: str, n: int, device: str, graph: bool) -> tuple[float, str]:
    """(ms per layer, SDPA backend or '') of the fastest way to run ``kind``."""
    if not kind.startswith("sdpa"):
        return median_ms(lambda: [lay.attn(kind, i, lay.q[i]) for i in range(n)], device, graph) / n, ""
    found: dict[str, float] = {}
    for backend in BACKENDS:
        if backend == SDPBackend.MATH and found:
            continue  # the unfused fallback only when no fused backend runs
        try:
            with sdpa_kernel(backend):
                fn = lambda: [lay.attn(kind, i, lay.q[i]) for i in range(n)]  # noqa: E731
                found[backend.name] = median_ms(fn, device, graph) / n
        except RuntimeError:
            continue
    best = min(found, key=found.get)
    return found[best], best


def decode_row(batch: int, ctx: int, device: str, copy_gbs: float, cap_gib: float) -> dict:
    """Decode attention over ``n`` layers: HeadQ kernel vs three bf16 baselines."""
    n = layer_count(batch, ctx, device, cap_gib)
    lay = Layers(batch, ctx, n, device)
    row = {"batch": batch, "context": ctx, "layers_timed": n, "quantized_tokens": lay.n_q,
           "byte_ratio": lay.bytes("sdpa_gqa") / lay.bytes("headq"), "copy_GBps": copy_gbs}  # fmt: skip
    for mode in modes(device):
        t = {}
        for kind in KINDS:
            try:
                t[kind] = time_kind(lay, kind, n, device, mode == "graph")
            except Exception as exc:  # noqa: BLE001 - a failing baseline is reported, the run goes on
                row.setdefault("errors", []).append(f"{mode} {kind}: {type(exc).__name__}: {exc}"[:300])
                t[kind] = (float("inf"), "")
        best_bf16 = min(BASELINES, key=lambda k: t[k][0])
        row[mode] = {
            "ms": {k: v[0] for k, v in t.items()},
            "sdpa_backend": {k: v[1] for k, v in t.items() if v[1]},
            "GBps": {k: lay.bytes(k) / v[0] / 1e6 for k, v in t.items()},
            "speedup_vs_sdpa_gqa": t["sdpa_gqa"][0] / t["headq"][0],
            "speedup_vs_sdpa_gqa_by_kind": {k: t["sdpa_gqa"][0] / t[k][0] for k in KINDS[:3]},
            "best_bf16": best_bf16,
            "speedup_vs_best_bf16": t[best_bf16][0] / t["headq"][0],
        }
    return row


def encode_row(batch: int, n_tok: int, device: str, copy_gbs: float) -> dict:
    """Encode throughput: bytes read (bf16 K, V) plus bytes written (the encoding) per second, of
    ``encode`` (its default launch) and on GPU of each (key groups per program, warps) launch."""
    from headq_core.runtime.kernels.triton_encode import encode_triton

    n = 4 if device == "cuda" else 1
    ks = [torch.randn(batch, HKV, n_tok, D, device=device).bfloat16() for _ in range(n)]
    vs = [torch.randn(batch, HKV, n_tok, D, device=device).bfloat16() for _ in range(n)]
    u = torch.linalg.qr(torch.randn(HKV, D, HEADQ.rank, device=device))[0]
    moved = nbytes(ks[0], vs[0]) + encode(ks[0], vs[0], KEY, VALUE, basis=u).nbytes()
    run_all = lambda: [encode(ks[i], vs[i], KEY, VALUE, basis=u) for i in range(n)]  # noqa: E731
    ms = median_ms(run_all, device) / n
    row = {"batch": batch, "tokens": n_tok, "ms": ms, "GBps": moved / ms / 1e6,
           "fraction_of_copy": moved / ms / 1e6 / copy_gbs, "sweep_ms": {}}  # fmt: skip
    if device == "cuda":  # the kernels' device time, without the host's launch overhead (graph replay)
        try:
            graph_ms = median_ms(run_all, device, graph=True) / n
            row.update(graph_ms=graph_ms, graph_fraction_of_copy=moved / graph_ms / 1e6 / copy_gbs)
        except Exception as exc:  # noqa: BLE001 - reported, the eager figure stands
            row["graph_ms"] = f"{type(exc).__name__}: {exc}"[:200]
    for gpp, warps in ENCODE_SWEEP if device == "cuda" else ():
        def run(gpp=gpp, warps=warps):
            for i in range(n):
                encode_triton(ks[i], vs[i], 2, 32, 2, 32, u, 8, groups_per_program=gpp, num_warps=warps)

        try:
            row["sweep_ms"][f"groups{gpp}_warps{warps}"] = median_ms(run, device) / n
        except Exception as exc:  # noqa: BLE001 - a launch that does not fit is reported
            row["sweep_ms"][f"groups{gpp}_warps{warps}"] = f"{type(exc).__name__}"[:80]
    return row


def check_row(device: str, ctx: int = 8192 + 100) -> dict:
    """Correctness of every compiled decode variant and of the encode kernel on large random inputs
    drawn fresh here (never zeros): relative error of the output against the float32 torch reference
    run on the same device, and encode bit-exactness (side codes within one step)."""
    from headq_core.runtime.kernels.reference import dequantize_side, encode_reference
    from headq_core.runtime.kernels.triton_encode import encode_triton

    lay = Layers(2, ctx, 1, device)
    ref = decode_attention(lay.q[0], lay.enc[0], lay.kr[0], lay.vr[0], lay.u[0], backend="reference")
    row: dict = {"batch": 2, "context": lay.ctx, "decode_rel_err": {}, "failed": []}
    for ptx, blk, w, regs in COMPILED:
        name = variant(ptx, blk, w, regs)
        try:
            args = (lay.q[0], lay.enc[0], lay.kr[0], lay.vr[0], lay.u[0], D**-0.5, 1)
            out = decode_attention_triton(*args, block=blk, num_warps=w, ptx=ptx, maxnreg=regs or None)
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        except Exception as exc:  # noqa: BLE001 - a variant that fails is reported and left out
            err = float("nan")
            row.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:300]
        row["decode_rel_err"][name] = err
        if not err < 1e-2:
            row["failed"].append(name)
    k, v = lay.k[0][:, :, : lay.n_q], lay.v[0][:, :, : lay.n_q]
    got = encode_triton(k, v, 2, 32, 2, 32, lay.u[0], 8)
    want = encode_reference(k, v, KEY, VALUE, lay.u[0], 8)
    row["encode_fields_equal"] = {n: bool(torch.equal(getattr(got, n), getattr(want, n)))
                                  for n in ("k_codes", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero")}
    step = want.side_scale.float().unsqueeze(-1)
    diff = (dequantize_side(got) - dequantize_side(want)).abs()
    row["encode_side_max_steps"] = (diff / step).max().item()
    row["encode_side_changed"] = (diff > 0).float().mean().item()
    row["ok"] = (not row["failed"] and all(row["encode_fields_equal"].values())
                 and row["encode_side_max_steps"] <= 1.001)
    return row


def tune_row(batch: int, ctx: int, device: str, cap_gib: float, skip: list[str]) -> dict:
    """Graph-replay time of the decode kernel per (ptx, block, warps, programs per SM) variant that
    passed the check, and eager time of the encode kernel (one layer) per warp count."""
    from headq_core.runtime.kernels.triton_encode import encode_triton

    n = layer_count(batch, ctx, device, cap_gib)
    lay = Layers(batch, ctx, n, device)
    row = {"batch": batch, "context": ctx, "ms": {}}
    for ptx, blk, warps, regs, per_sm, max_splits in TUNE:
        if variant(ptx, blk, warps, regs) in skip:
            continue
        cfg = {"ptx": ptx, "block": blk, "num_warps": warps, "maxnreg": regs or None, "per_sm": per_sm,
               "max_splits": max_splits}

        def run(cfg=cfg):
            for i in range(n):
                args = (lay.q[i], lay.enc[i], lay.kr[i], lay.vr[i], lay.u[i], D**-0.5, 1)
                decode_attention_triton(*args, **cfg)

        name = f"decode_{variant(ptx, blk, warps, regs)}_persm{per_sm}_max{max_splits}"
        try:
            row["ms"][name] = median_ms(run, device, graph=True) / n
            row.setdefault("cfg", {})[name] = cfg
        except Exception as exc:  # noqa: BLE001 - a variant that does not fit is reported, not fatal
            row["ms"][name] = None
            row.setdefault("errors", []).append(f"{name}: {type(exc).__name__}")
    k, v = lay.k[0][:, :, : lay.n_q].contiguous(), lay.v[0][:, :, : lay.n_q].contiguous()
    for gpp, warps in ENCODE_SWEEP if ctx >= 32768 else ():
        fn = lambda g=gpp, w=warps: encode_triton(k, v, 2, 32, 2, 32, lay.u[0], 8,  # noqa: E731
                                                  groups_per_program=g, num_warps=w)
        row["ms"][f"encode_groups{gpp}_warps{warps}"] = median_ms(fn, device)
    return row


def block_row(batch: int, ctx: int, device: str, cap_gib: float, bf16: str, backend: str) -> dict:
    """One attention block per layer (qkv projection, RoPE on q, attention, o projection) over ``n``
    layers with their own weights; the bf16 side runs baseline ``bf16`` (SDPA ``backend``)."""
    n = layer_count(batch, ctx, device, cap_gib)
    lay = Layers(batch, ctx, n, device)
    wqkv = [torch.randn(HIDDEN + 2 * HKV * D, HIDDEN, device=device).bfloat16() * 0.02 for _ in range(n)]
    wo = [torch.randn(HIDDEN, HIDDEN, device=device).bfloat16() * 0.02 for _ in range(n)]
    x0 = torch.randn(batch, 1, HIDDEN, device=device).bfloat16()
    ang = torch.arange(D // 2, device=device) * 1e-3 * ctx
    cos, sin = ang.cos().repeat(2).bfloat16(), ang.sin().repeat(2).bfloat16()

    def step(kind):
        x = x0
        for i in range(n):
            q = (x @ wqkv[i].T)[..., :HIDDEN].view(batch, 1, HQ, D).transpose(1, 2)
            q = q * cos + torch.cat([-q[..., D // 2 :], q[..., : D // 2]], -1) * sin
            x = lay.attn(kind, i, q).transpose(1, 2).reshape(batch, 1, HIDDEN) @ wo[i].T
        return x

    row = {"batch": batch, "context": ctx, "layers_timed": n, "bf16_baseline": bf16, "sdpa_backend": backend,
           "note": "attention block of each layer with the kernel (model section: HeadQCache)"}  # fmt: skip
    for mode in modes(device):
        graph = mode == "graph"
        with sdpa_kernel(getattr(SDPBackend, backend or "MATH")):
            t_b = median_ms(lambda: step(bf16), device, graph) / n
        t_q = median_ms(lambda: step("headq"), device, graph) / n
        row[mode] = {"bf16_ms": t_b, "headq_ms": t_q, "time_ratio": t_q / t_b}
    return row


def show(section: str, r: dict) -> None:
    """Print one result row as soon as it is measured."""
    us = 1e3
    if section == "decode":
        for m in modes("cuda" if "graph" in r else "cpu"):
            e = r[m]
            times = "  ".join(f"{k} {v * us:.1f}" for k, v in e["ms"].items())
            print(
                f"decode B={r['batch']:>2} ctx={r['context']:>6} {m:5} us: {times} | "
                f"x{e['speedup_vs_sdpa_gqa']:.2f} "
                f"vs sdpa_gqa, x{e['speedup_vs_best_bf16']:.2f} vs {e['best_bf16']} | headq "
                f"{e['GBps']['headq']:.0f} GB/s of {r['copy_GBps']:.0f} copy; bytes x{r['byte_ratio']:.2f}"
            )
    elif section == "block":
        for m in modes("cuda" if "graph" in r else "cpu"):
            e = r[m]
            print(f"block  B={r['batch']} ctx={r['context']:>6} {m:5}: {r['bf16_baseline']} "
                  f"{e['bf16_ms'] * us:.1f} "
                  f"us, headq {e['headq_ms'] * us:.1f} us, time ratio {e['time_ratio']:.2f}")  # fmt: skip
    else:  # encode, tune, model, memory: the row's numbers
        vals = {k: v for k, v in r.items() if not isinstance(v, dict | list)}
        for part in ("ms", "decode_rel_err", "sweep_ms"):
            vals |= r[part] if isinstance(r.get(part), dict) else {}
        vals |= {"failed": r["failed"]} if r.get("failed") else {}
        cells = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in vals.items())
        print(f"{section:6} " + ", ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cap-gib", type=float, default=32.0, help="bf16 cache bytes per timed shape")
    ap.add_argument("--sections", default="check,tune,decode,encode,model,block,memory",
                    help="comma list (run in this order)")
    args = ap.parse_args()
    want = set(args.sections.split(","))
    dev = args.device
    torch.manual_seed(0)
    gpu = dev == "cuda"
    decode_shapes = [(1, 4096), (1, 32768), (8, 32768), (16, 131072)] if gpu else [(1, 1024), (1, 4096)]
    copy_gbs = copy_bandwidth(dev)
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    from testkit.provenance import commit

    res = {"command": " ".join(sys.argv), "date": now, "commit": commit(),
           "device": torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine(),
           "torch": torch.__version__, "copy_GBps": copy_gbs,
           "config": {"key": str(KEY), "value": str(VALUE), "headq": str(HEADQ), "q_heads": HQ,
                      "kv_heads": HKV, "head_dim": D}}  # fmt: skip
    if gpu:
        import triton

        res["triton"] = triton.__version__
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def record(section: str, make, *a) -> dict:
        """Measure one row (a failure is recorded and the run goes on), print it, save the JSON."""
        try:
            row = make(*a)
            show(section, row)
        except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
            row = {"error": f"{type(exc).__name__}: {exc}"[:500], "args": [str(x) for x in a]}
            print(section, row)
        res.setdefault(section, []).append(row)
        args.out.write_text(json.dumps(res, indent=1))
        return row

    failed: list[str] = []
    if gpu and "check" in want:
        failed = record("check", check_row, dev).get("failed", [])
    for b, c in TUNE_SHAPES if gpu and "tune" in want else ():
        record("tune", tune_row, b, c, dev, args.cap_gib, failed)
    if "tune" in res and all("cfg" in r for r in res["tune"]):  # smallest sum over shapes of time / best
        names = [k for k in res["tune"][0]["cfg"] if all(r["ms"].get(k) for r in res["tune"])]
        fastest = [min(r["ms"][k] for k in names) for r in res["tune"]]
        rel = {k: sum(r["ms"][k] / f for r, f in zip(res["tune"], fastest, strict=True)) for k in names}
        best = min(names, key=rel.__getitem__)
        DECODE_CFG.update(res["tune"][0]["cfg"][best])
        res["decode_cfg"] = dict(DECODE_CFG)
        res["decode_best_per_shape"] = [min(names, key=lambda k, r=r: r["ms"][k]) for r in res["tune"]]
        print("decode settings:", DECODE_CFG, "best per shape:", res["decode_best_per_shape"])
    for b, c in decode_shapes if "decode" in want else ():
        record("decode", decode_row, b, c, dev, copy_gbs, args.cap_gib)
    for b, c in ([(1, 32768), (8, 32768)] if gpu else [(1, 1024)]) if "encode" in want else ():
        record("encode", encode_row, b, c, dev, copy_gbs)
    # (batch, context, layers): B = 8 with 16 of the 32 layers, so that the bf16 cache and the step
    # captured in a CUDA graph (its own copy of the grown cache) fit 80 GB
    model_shapes = [(1, 4096, 32), (1, 32768, 32), (8, 4096, 16), (8, 32768, 16)] if gpu else [(1, 256, 2)]
    for b, c, n_layers in model_shapes if "model" in want else ():
        record("model", model_row, c, dev, b, n_layers)
    rows = [r for r in res.get("decode", []) if "eager" in r and r["batch"] == 1 and "block" in want]
    for r in rows[:: 1 if gpu else 2][:2]:
        e = r["eager"]
        kind = e["best_bf16"]
        record("block", block_row, 1, r["context"], dev, args.cap_gib, kind, e["sdpa_backend"].get(kind, ""))
    if "memory" in want:
        record("memory", bench_memory, dev, 32768 if gpu else 4096, 16.0)


if __name__ == "__main__":
    main()
