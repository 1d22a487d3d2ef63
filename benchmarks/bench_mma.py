"""The tensor-core decode kernel (``mma_decode``) against the Triton kernel and bf16 SDPA (issue 19).

Sections, in order, each row printed and the JSON rewritten as soon as it is measured:
``check``: every layout case against the float32 reference on fresh random inputs (relative error
of the output), for each kernel of ``--kernels`` (``KERNELS``, kernel variants to compare; one
today); ``tune``: graph-replay time of each kernel that passed,
per launch setting, at four shapes, each launch first checked against the reference on the shape's
first layer;
``decode``: per-layer graph-replay time of the tuned kernel (HeadQ 2-bit + r8, plain 2-bit, plain
4-bit), the best launch of the first kernel, the Triton kernel and the bf16 baselines of
``bench_gpu.py`` at the issue's four shapes. Nothing is timed before it passed its check.

    python benchmarks/bench_mma.py --out benchmarks/results/mma_h100.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gpu import Layers, layer_count, time_kind  # noqa: E402
from bench_timing import copy_bandwidth, median_ms  # noqa: E402
from gpu_shapes import HEADQ, KEY, VALUE, D  # noqa: E402

from headq_core.config import QuantConfig  # noqa: E402
from headq_core.runtime.kernels import encode, nvrtc  # noqa: E402
from headq_core.runtime.kernels.mma_decode import STAGES, WARPS, decode_attention_mma, defines, source  # noqa: E402
from headq_core.runtime.kernels.reference import decode_attention_reference  # noqa: E402
from headq_core.runtime.kernels.triton_decode import decode_attention_triton  # noqa: E402
from testkit.mma_cases import CASES, start_for  # noqa: E402

# kernel variants (decode_attention_mma keyword arguments besides the launch) to compare in one run
KERNELS: dict[str, dict] = {"mma": {}}
SPLIT_CAPS = ((32, 128), (32, 256), (64, 256), (64, 512))  # (warps per SM, most splits)
LAUNCHES: list[dict] = []  # the tuning grid: --warps x --stages x SPLIT_CAPS
TUNE_SHAPES = ((1, 4096), (1, 32768), (8, 32768), (16, 131072))
DECODE_SHAPES = ((1, 4096), (1, 32768), (8, 32768), (16, 131072))
MMA_CFG: dict = {}  # the tuned kernel and launch (decode_attention_mma keyword arguments)
FIRST_CFG: dict = {}  # the best launch of the first kernel of --kernels


def kernel_args(kernel: str, launch: dict | None = None) -> dict:
    """decode_attention_mma keyword arguments of one kernel variant and launch."""
    return {**KERNELS[kernel], **(launch or {"warps": WARPS, "stages": STAGES})}


def prewarm(args_list: list[dict], case_defs: list[tuple]) -> None:
    """Compile every (variant, launch) the run will use, on all cores, into the cubin cache."""
    from concurrent.futures import ThreadPoolExecutor

    major, minor = torch.cuda.get_device_capability()
    srcs = set()
    for kw, (kb, vb, gk, gv, rank, gq, softcap, rows, bf16) in ((a, c) for a in args_list for c in case_defs):
        cfg = defines(kb, vb, gk, gv, rank, gq, softcap, rows, bf16, kw["warps"], kw["stages"])
        srcs.add(source(cfg))
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda src: nvrtc.cached_cubin(src, major * 10 + minor), srcs))


def _case_def(case: tuple) -> tuple:
    name, kb, gk, vb, gv, rank, hq, hkv, dt, res, start, softcap, splits = case
    return (kb, vb, gk, gv, rank, hq // hkv, softcap is not None, start == "rows", dt == "bf16")


def check_case(case: tuple, device: str, kernel: str, ctx: int = 8192 + 100) -> dict:
    """Relative error of one tensor-core kernel variant against the float32 reference for one layout."""
    name, kb, gk, vb, gv, rank, hq, hkv, dt, res, start, softcap, splits = case
    dtype = torch.bfloat16 if dt == "bf16" else torch.float16
    b = 2
    n = (ctx - res) // gk * gk
    k = (torch.randn(b, hkv, n + res, D, device=device) + 2).to(dtype)
    v = torch.randn(b, hkv, n + res, D, device=device).to(dtype)
    u = torch.linalg.qr(torch.randn(hkv, D, rank, device=device))[0] if rank else None
    key = QuantConfig(bits=kb, axis="per_channel", group_size=gk, residual=res)
    val = QuantConfig(bits=vb, axis="per_token", group_size=gv, residual=res)
    enc = encode(k[:, :, :n], v[:, :, :n], key, val, basis=u)
    kr, vr = (k[:, :, n:].contiguous(), v[:, :, n:].contiguous()) if res else (None, None)
    q = torch.randn(b, hq, 1, D, device=device).to(dtype)
    st = start_for(start, n, device)
    ref = decode_attention_reference(q, enc, kr, vr, u, D**-0.5, 1, st, softcap)
    row = {"kernel": kernel, "case": name}
    for sign in (1, -1) if rank else (1,):
        out = decode_attention_mma(q, enc, kr, vr, u, D**-0.5, sign, splits, start=st, softcap=softcap,
                                   **kernel_args(kernel))
        want = ref if sign == 1 else decode_attention_reference(q, enc, kr, vr, u, D**-0.5, -1, st, softcap)
        if out is None:
            row["error"] = "not launched (alignment)"
            continue
        err = ((out.float() - want.float()).norm() / want.float().norm()).item()
        row[f"rel_err_sign{sign:+d}"] = err
    if "ok" not in row:
        row["ok"] = all(v < 1e-2 for k, v in row.items() if k.startswith("rel_err")) and "error" not in row
    return row


class MmaLayers(Layers):
    """bench_gpu's layers with the tensor-core kernel as kinds ``mma_headq``, ``mma_plain2/4`` (the tuned
    kernel) and ``mma_headq_first`` (the first kernel's best launch)."""

    def attn(self, kind: str, i: int, q: torch.Tensor) -> torch.Tensor:
        if kind.startswith("mma_"):
            headq = kind.startswith("mma_headq")
            enc = self.enc[i] if headq else self.plain[kind[4:]][i]
            cfg = FIRST_CFG if kind == "mma_headq_first" else MMA_CFG
            return decode_attention_mma(q, enc, self.kr[i], self.vr[i], self.u[i] if headq else None,
                                        D**-0.5, 1, **cfg)
        if kind.startswith("triton_"):  # the tuned Triton launch (docs/benchmarks.md, section 10)
            enc = self.enc[i] if kind == "triton_headq" else self.plain[kind[7:]][i]
            u = self.u[i] if kind == "triton_headq" else None
            return decode_attention_triton(q, enc, self.kr[i], self.vr[i], u, D**-0.5, 1)
        return super().attn(kind, i, q)


KINDS = ("mma_headq", "mma_headq_first", "mma_plain2", "mma_plain4", "triton_headq", "triton_plain2",
         "sdpa_gqa")


def decode_row(batch: int, ctx: int, device: str, cap_gib: float) -> dict:
    n = layer_count(batch, ctx, device, cap_gib)
    lay = MmaLayers(batch, ctx, n, device)
    row: dict = {"batch": batch, "context": ctx, "layers_timed": n, "us": {}}
    for kind in KINDS:
        if kind == "mma_headq_first" and FIRST_CFG == MMA_CFG:
            continue  # the tuned launch is the first kernel's: timed once, as mma_headq
        row["us"][kind] = time_kind(lay, kind, n, device, True)[0] * 1e3
    sdpa = row["us"]["sdpa_gqa"]
    row["speedup_vs_sdpa"] = {k: sdpa / v for k, v in row["us"].items()}
    return row


def first_row(enc):
    """The encoding of batch row 0 only (the float32 reference of a 16 x 128k cache would not fit)."""
    tensors = {f.name: getattr(enc, f.name) for f in dataclasses.fields(enc)}
    return dataclasses.replace(enc, **{k: v[:1] for k, v in tensors.items() if isinstance(v, torch.Tensor)})


def tune_row(batch: int, ctx: int, device: str, cap_gib: float, kernels: list[str]) -> dict:
    """Graph-replay us per layer of bf16 SDPA and of every (kernel, launch); a launch whose output on
    the first layer's batch row 0 is off the float32 reference by more than 1e-2 (relative) is
    reported, not timed."""
    n = layer_count(batch, ctx, device, cap_gib)
    lay = MmaLayers(batch, ctx, n, device)
    ref = decode_attention_reference(lay.q[0][:1], first_row(lay.enc[0]), lay.kr[0][:1], lay.vr[0][:1],
                                     lay.u[0], D**-0.5, 1).float()
    row: dict = {"batch": batch, "context": ctx, "us": {}, "rel_err": {},
                 "sdpa_gqa_us": time_kind(lay, "sdpa_gqa", n, device, True)[0] * 1e3}
    for kernel in kernels:
        for launch in LAUNCHES:
            cfg = kernel_args(kernel, launch)
            key = json.dumps({"kernel": kernel, **launch})
            try:
                out = decode_attention_mma(lay.q[0], lay.enc[0], lay.kr[0], lay.vr[0], lay.u[0], D**-0.5, 1,
                                           **cfg)
                err = ((out[:1].float() - ref).norm() / ref.norm()).item()
                row["rel_err"][key] = err
                if not err < 1e-2:
                    row["us"][key] = f"check failed: relative error {err:.3g}"
                    continue
                fn = lambda cfg=cfg: [decode_attention_mma(lay.q[i], lay.enc[i], lay.kr[i], lay.vr[i],  # noqa: E731
                                                           lay.u[i], D**-0.5, 1, **cfg) for i in range(n)]
                row["us"][key] = median_ms(fn, device, graph=True) / n * 1e3
            except Exception as exc:  # noqa: BLE001 - a setting that does not fit is reported
                row["us"][key] = f"{type(exc).__name__}: {exc}"[:200]
    return row


def best_launch(rows: list[dict], kernel: str | None = None) -> dict:
    """The (kernel, launch) with the smallest sum over the shapes of its time relative to each shape's
    fastest; ``kernel`` restricts the choice to one kernel."""
    names = [k for k in rows[0]["us"] if all(isinstance(r["us"].get(k), float) for r in rows)
             and (kernel is None or json.loads(k)["kernel"] == kernel)]
    fastest = [min(v for v in r["us"].values() if isinstance(v, float)) for r in rows]
    best = json.loads(min(names, key=lambda k: sum(
        r["us"][k] / f for r, f in zip(rows, fastest, strict=True))))
    return {"kernel": best.pop("kernel"), **best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sections", default="check,tune,decode")
    ap.add_argument("--kernels", default=",".join(KERNELS), help="kernel variants, the first is the baseline")
    ap.add_argument("--cap-gib", type=float, default=24.0)
    ap.add_argument("--warps", default="2,4,8", help="warps per block to tune over")
    ap.add_argument("--stages", default="2,3", help="pipeline stages to tune over")
    args = ap.parse_args()
    from testkit.provenance import commit

    dev = "cuda"
    torch.manual_seed(0)
    kernels = args.kernels.split(",")
    res: dict = {"command": " ".join(sys.argv), "commit": commit(), "device": torch.cuda.get_device_name(),
                 "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                 "torch": torch.__version__, "nvrtc": ".".join(map(str, nvrtc.version())),
                 "copy_GBps": copy_bandwidth(dev), "kernels": {k: KERNELS[k] for k in kernels},
                 "config": {"key": str(KEY), "value": str(VALUE), "headq": str(HEADQ)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def record(section: str, make, *a) -> dict:
        try:
            row = make(*a)
        except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
            row = {"error": f"{type(exc).__name__}: {exc}"[:800], "args": [str(x) for x in a]}
        print(section, json.dumps(row), flush=True)
        res.setdefault(section, []).append(row)
        args.out.write_text(json.dumps(res, indent=1))
        return row

    LAUNCHES.extend({"warps": int(w), "stages": int(st), "per_sm": ps, "max_splits": ms}
                    for w in args.warps.split(",") for st in args.stages.split(",") for ps, ms in SPLIT_CAPS)
    want = args.sections.split(",")
    headq = [_case_def(CASES[0])]
    prewarm([kernel_args(k) for k in kernels], [_case_def(c) for c in CASES])
    prewarm([kernel_args(k, launch) for k in kernels for launch in LAUNCHES], headq)
    if "check" in want:
        for kernel in kernels:
            for case in CASES:
                record("check", check_case, case, dev, kernel)
        kernels = [k for k in kernels if all(r.get("ok") for r in res["check"] if r.get("kernel") == k)]
        res["kernels_passed"] = kernels
        if not kernels:
            print("check failed: nothing is timed")
            return
    MMA_CFG.update(kernel_args(kernels[0]))
    if "tune" in want:
        for b, c in TUNE_SHAPES:
            record("tune", tune_row, b, c, dev, args.cap_gib, kernels)
        rows = [r for r in res["tune"] if "us" in r]
        best = best_launch(rows)
        res["best_per_kernel"] = {k: best_launch(rows, k) for k in kernels}
        first = res["best_per_kernel"][kernels[0]]
        MMA_CFG.clear()
        MMA_CFG.update(kernel_args(best.pop("kernel"), best))
        FIRST_CFG.update(kernel_args(first.pop("kernel"), first))
        res["mma_cfg"], res["first_cfg"] = dict(MMA_CFG), dict(FIRST_CFG)
        print("tuned:", MMA_CFG, "first kernel:", FIRST_CFG, flush=True)
    if not FIRST_CFG:  # not tuned: the first kernel's default launch
        FIRST_CFG.update(MMA_CFG)
    if "decode" in want:
        for b, c in DECODE_SHAPES:
            record("decode", decode_row, b, c, dev, args.cap_gib)


if __name__ == "__main__":
    main()
