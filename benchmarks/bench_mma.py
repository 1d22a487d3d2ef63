"""The tensor-core decode kernel (``mma_decode``) against the Triton kernel and bf16 SDPA (issue 19).

Sections, in order, each row printed and the JSON rewritten as soon as it is measured:
``check``: every layout variant against the float32 reference on fresh random inputs (relative
error of the output); ``tune``: graph-replay time per launch setting at three shapes; ``decode``:
per-layer graph-replay time of the tensor-core kernel (HeadQ 2-bit + r8, plain 2-bit, plain 4-bit),
the Triton kernel and the bf16 baselines of ``bench_gpu.py`` at the issue's four shapes. Only a
variant that passed the check is timed.

    python benchmarks/bench_mma.py --out benchmarks/results/mma_h100.json
"""

from __future__ import annotations

import argparse
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
from headq_core.runtime.kernels import encode  # noqa: E402
from headq_core.runtime.kernels.mma_decode import decode_attention_mma  # noqa: E402
from headq_core.runtime.kernels.reference import decode_attention_reference  # noqa: E402
from headq_core.runtime.kernels.triton_decode import decode_attention_triton  # noqa: E402
from testkit.mma_cases import CASES, start_for  # noqa: E402

TUNE = tuple({"warps": w, "stages": st, "per_sm": ps, "max_splits": ms}
             for w in (2, 4) for st in (2, 3, 4) for ps, ms in ((16, 64), (32, 128), (32, 256)))
TUNE_SHAPES = ((1, 4096), (1, 32768), (8, 32768))
MMA_CFG: dict = {}


def check_case(case: tuple, device: str, ctx: int = 8192 + 100) -> dict:
    """Relative error of the tensor-core kernel against the float32 reference for one layout."""
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
    row = {"case": name}
    for sign in (1, -1) if rank else (1,):
        out = decode_attention_mma(q, enc, kr, vr, u, D**-0.5, sign, splits, start=st, softcap=softcap,
                                   **MMA_CFG)
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
    """bench_gpu's layers with the tensor-core kernel as kinds ``mma_headq``, ``mma_plain2/4``."""

    def attn(self, kind: str, i: int, q: torch.Tensor) -> torch.Tensor:
        if kind.startswith("mma_"):
            enc = self.enc[i] if kind == "mma_headq" else self.plain[kind[4:]][i]
            u = self.u[i] if kind == "mma_headq" else None
            return decode_attention_mma(q, enc, self.kr[i], self.vr[i], u, D**-0.5, 1, **MMA_CFG)
        if kind.startswith("triton_"):  # the tuned Triton launch (docs/benchmarks.md, section 10)
            enc = self.enc[i] if kind == "triton_headq" else self.plain[kind[7:]][i]
            u = self.u[i] if kind == "triton_headq" else None
            return decode_attention_triton(q, enc, self.kr[i], self.vr[i], u, D**-0.5, 1)
        return super().attn(kind, i, q)


KINDS = ("mma_headq", "mma_plain2", "mma_plain4", "triton_headq", "triton_plain2", "sdpa_gqa")


def decode_row(batch: int, ctx: int, device: str, cap_gib: float) -> dict:
    n = layer_count(batch, ctx, device, cap_gib)
    lay = MmaLayers(batch, ctx, n, device)
    row: dict = {"batch": batch, "context": ctx, "layers_timed": n, "us": {}}
    for kind in KINDS:
        row["us"][kind] = time_kind(lay, kind, n, device, True)[0] * 1e3
    sdpa = row["us"]["sdpa_gqa"]
    row["speedup_vs_sdpa"] = {k: sdpa / v for k, v in row["us"].items()}
    return row


def tune_row(batch: int, ctx: int, device: str, cap_gib: float) -> dict:
    n = layer_count(batch, ctx, device, cap_gib)
    lay = MmaLayers(batch, ctx, n, device)
    row: dict = {"batch": batch, "context": ctx, "us": {}}
    for cfg in TUNE:
        fn = lambda cfg=cfg: [decode_attention_mma(lay.q[i], lay.enc[i], lay.kr[i], lay.vr[i], lay.u[i],  # noqa: E731
                                                   D**-0.5, 1, **cfg) for i in range(n)]
        try:
            row["us"][json.dumps(cfg)] = median_ms(fn, device, graph=True) / n * 1e3
        except Exception as exc:  # noqa: BLE001 - a setting that does not fit is reported
            row["us"][json.dumps(cfg)] = f"{type(exc).__name__}: {exc}"[:200]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sections", default="check,tune,decode")
    ap.add_argument("--cap-gib", type=float, default=24.0)
    args = ap.parse_args()
    from testkit.provenance import commit

    dev = "cuda"
    torch.manual_seed(0)
    res: dict = {"command": " ".join(sys.argv), "commit": commit(), "device": torch.cuda.get_device_name(),
                 "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                 "torch": torch.__version__, "copy_GBps": copy_bandwidth(dev),
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

    want = args.sections.split(",")
    if "check" in want:
        for case in CASES:
            record("check", check_case, case, dev)
        if not all(r.get("ok") for r in res["check"]):
            print("check failed: nothing is timed")
            return
    if "tune" in want:
        for b, c in TUNE_SHAPES:
            record("tune", tune_row, b, c, dev, args.cap_gib)
        rows = [r for r in res["tune"] if "us" in r]
        names = [k for k in rows[0]["us"] if all(isinstance(r["us"][k], float) for r in rows)]
        fastest = [min(v for v in r["us"].values() if isinstance(v, float)) for r in rows]
        best = min(names, key=lambda k: sum(r["us"][k] / f for r, f in zip(rows, fastest, strict=True)))
        MMA_CFG.update(json.loads(best))
        res["mma_cfg"] = dict(MMA_CFG)
        print("tuned:", MMA_CFG, flush=True)
    if "decode" in want:
        for b, c in ((1, 4096), (1, 32768), (8, 32768), (16, 131072)):
            record("decode", decode_row, b, c, dev, args.cap_gib)


if __name__ == "__main__":
    main()
