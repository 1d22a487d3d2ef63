"""Run the decode kernel at one shape for Nsight Compute (ncu) to profile: Llama-3-8B shapes, the
quantized cache of bench_gpu (2-bit K/V, HeadQ r8, residual 128), random inputs. The kernel's name
is ``_decode_kernel``; the first launches compile and warm up, so profile a later one:

    ncu --kernel-name _decode_kernel --launch-skip 3 --launch-count 1 --clock-control none \
        --section SpeedOfLight --section WarpStateStats --section Occupancy \
        python3 benchmarks/ncu_decode.py --batch 8 --context 32768
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_shapes import HEADQ, HKV, HQ, KEY, VALUE, D  # noqa: E402

from headq_core.method.schedule import quantized_count  # noqa: E402
from headq_core.runtime.kernels import encode  # noqa: E402
from headq_core.runtime.kernels.triton_decode import decode_attention_triton  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--side", action=argparse.BooleanOptionalAction, default=True, help="HeadQ side code")
    ap.add_argument("--launches", type=int, default=5)
    args = ap.parse_args()
    n_q = quantized_count(args.context, KEY)
    k = (torch.randn(args.batch, HKV, args.context, D, device="cuda") + 2).bfloat16()
    v = torch.randn_like(k)
    u = torch.linalg.qr(torch.randn(HKV, D, HEADQ.rank, device="cuda"))[0] if args.side else None
    enc = encode(k[:, :, :n_q], v[:, :, :n_q], KEY, VALUE, basis=u, backend="reference")
    q = torch.randn(args.batch, HQ, 1, D, device="cuda").bfloat16()
    for _ in range(args.launches):
        decode_attention_triton(q, enc, k[:, :, n_q:], v[:, :, n_q:], u, D**-0.5, 1)
    torch.cuda.synchronize()
    print("ran", args.launches, "launches")


if __name__ == "__main__":
    main()
