"""Triton encode: quantize + pack keys, values and the HeadQ side code in one pass.

One program per (batch*kv_head, key group of ``GK`` tokens): it reads the group's keys and values
once ``[GK, d]``, writes key codes (per-channel fp16 scale/zero), value codes (per-token groups of
``GV`` channels) and, with a basis, the side code ``U^T (k - k^)`` with its per-token scale.
Numerics match :mod:`headq_core.runtime.kernels.reference` (half-to-even rounding, fp16-rounded scales).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from headq_core.method.packing import packed_size
from headq_core.runtime.kernels.layout import EncodedKV


@triton.jit
def round_half_even(y):
    """torch.round for float32 tensors (ties to even), exact for ``|y| < 2**22`` (every use here):
    adding 2**23 to ``|y|`` rounds it to an integer in the FPU's round-to-nearest-even mode and
    subtracting 2**23 again is exact (two adds instead of a floor-and-compare sequence)."""
    r = (tl.abs(y) + 8388608.0) - 8388608.0
    return tl.where(y < 0.0, -r, r)


@triton.jit
def fp16_scale(span, QMAX: tl.constexpr):
    """fp16-rounded ``span / QMAX`` as float32, 1 where it rounds to 0."""
    s = tl.math.div_rn(span, tl.full(span.shape, QMAX, tl.float32)).to(tl.float16).to(tl.float32)
    return tl.where(s == 0.0, 1.0, s)


@triton.jit
def pack_rows(codes, ROWS: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr):
    """int32 codes [ROWS, D] -> uint8 [ROWS, D*BITS/8], little-endian bitstream along D."""
    PER: tl.constexpr = 8 // BITS
    c3 = tl.reshape(codes, (ROWS, D // PER, PER))
    shifts = tl.arange(0, PER) * BITS
    return tl.sum(c3 << shifts[None, None, :], axis=2).to(tl.uint8)


@triton.jit
def _encode_kernel(k_ptr, v_ptr, u_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, sc_ptr, ss_ptr,
                   H, N, R,
                   D: tl.constexpr, GK: tl.constexpr, KBITS: tl.constexpr, GV: tl.constexpr,
                   VBITS: tl.constexpr, RP: tl.constexpr, SIDE_BITS: tl.constexpr, HAS_SIDE: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    rows = g * GK + tl.arange(0, GK)  # token index within the head
    cols = tl.arange(0, D)
    tok = (bh * N + rows)[:, None]  # row index into [B*H*N, ...]
    x = tl.load(k_ptr + tok * D + cols[None, :]).to(tl.float32)  # [GK, D]
    y = tl.load(v_ptr + tok * D + cols[None, :]).to(tl.float32)

    # keys: per channel over the GK tokens
    KQ: tl.constexpr = (1 << KBITS) - 1
    lo = tl.min(x, axis=0).to(tl.float16).to(tl.float32)
    ks = fp16_scale(tl.max(x, axis=0) - tl.min(x, axis=0), KQ)
    kcode = tl.minimum(tl.maximum(round_half_even(tl.math.div_rn(x - lo[None, :], ks[None, :])), 0.0), KQ)
    gidx = (bh * (N // GK) + g) * D + cols
    tl.store(ks_ptr + gidx, ks.to(tl.float16))
    tl.store(kz_ptr + gidx, lo.to(tl.float16))
    KW: tl.constexpr = D * KBITS // 8
    tl.store(kc_ptr + tok * KW + tl.arange(0, KW)[None, :], pack_rows(kcode.to(tl.int32), GK, D, KBITS))

    # values: per token, groups of GV channels
    VQ: tl.constexpr = (1 << VBITS) - 1
    NG: tl.constexpr = D // GV
    y3 = tl.reshape(y, (GK, NG, GV))
    vlo = tl.min(y3, axis=2).to(tl.float16).to(tl.float32)
    vs = fp16_scale(tl.max(y3, axis=2) - tl.min(y3, axis=2), VQ)
    vcode3 = round_half_even(tl.math.div_rn(y3 - vlo[:, :, None], vs[:, :, None]))
    vcode = tl.reshape(tl.minimum(tl.maximum(vcode3, 0.0), VQ), (GK, D))
    sidx = tok * NG + tl.arange(0, NG)[None, :]
    tl.store(vs_ptr + sidx, vs.to(tl.float16))
    tl.store(vz_ptr + sidx, vlo.to(tl.float16))
    VW: tl.constexpr = D * VBITS // 8
    tl.store(vc_ptr + tok * VW + tl.arange(0, VW)[None, :], pack_rows(vcode.to(tl.int32), GK, D, VBITS))

    if HAS_SIDE:
        rcols = tl.arange(0, RP)
        h = bh % H
        u = tl.load(u_ptr + (h * D + cols[:, None]) * R + rcols[None, :], mask=rcols[None, :] < R, other=0.0)
        resid = x - (kcode * ks[None, :] + lo[None, :])
        c = tl.dot(resid, u.to(tl.float32), input_precision="ieee")  # [GK, RP]
        rmask = rcols[None, :] < R
        if SIDE_BITS == 16:
            tl.store(sc_ptr + tok * R + rcols[None, :], c.to(tl.float16), mask=rmask)
        else:
            SQ: tl.constexpr = 127 if SIDE_BITS == 8 else 7
            ss = fp16_scale(tl.max(tl.abs(c), axis=1), SQ)
            scode = tl.minimum(tl.maximum(round_half_even(tl.math.div_rn(c, ss[:, None])), -SQ), SQ)
            tl.store(ss_ptr + bh * N + rows, ss.to(tl.float16))
            if SIDE_BITS == 8:
                tl.store(sc_ptr + tok * R + rcols[None, :], scode.to(tl.int8), mask=rmask)
            else:
                nib = scode.to(tl.int32) & 15
                SW: tl.constexpr = RP // 2
                wcols = tl.arange(0, SW)
                tl.store(sc_ptr + tok * ((R + 1) // 2) + wcols[None, :], pack_rows(nib, GK, RP, 4),
                         mask=wcols[None, :] < (R + 1) // 2)


def encode_triton(k: torch.Tensor, v: torch.Tensor, key_bits: int, key_group: int, value_bits: int,
                  value_group: int, basis: torch.Tensor | None, side_bits: int,
                  num_warps: int = 2) -> EncodedKV:
    """Triton path of :func:`headq_core.runtime.kernels.encode` (inputs already validated; k, v
    [B, Hkv, N, d] with power-of-two d, key_group >= 16 and value_group, bits dividing 8)."""
    b, h, n, d = k.shape
    k, v = k.contiguous(), v.contiguous()
    dev = k.device
    kc = torch.empty(b, h, n, packed_size(d, key_bits), dtype=torch.uint8, device=dev)
    ks = torch.empty(b, h, n // key_group, d, dtype=torch.float16, device=dev)
    kz = torch.empty_like(ks)
    vc = torch.empty(b, h, n, packed_size(d, value_bits), dtype=torch.uint8, device=dev)
    vs = torch.empty(b, h, n, d // value_group, dtype=torch.float16, device=dev)
    vz = torch.empty_like(vs)
    rank = 0 if basis is None else basis.shape[-1]
    side = side_scale = None
    if basis is not None:
        basis = basis.to(device=dev, dtype=torch.float32).contiguous()
        side = torch.empty(b, h, n, packed_size(rank, 4) if side_bits == 4 else rank, device=dev,
                           dtype={4: torch.uint8, 8: torch.int8, 16: torch.float16}[side_bits])
        if side_bits != 16:
            side_scale = torch.empty(b, h, n, dtype=torch.float16, device=dev)
    if n:
        _encode_kernel[(b * h, n // key_group)](
            k, v, basis if basis is not None else k, kc, ks, kz, vc, vs, vz,
            side if side is not None else kc, side_scale if side_scale is not None else ks,
            h, n, rank, D=d, GK=key_group, KBITS=key_bits, GV=value_group, VBITS=value_bits,
            RP=max(16, triton.next_power_of_2(max(rank, 1))), SIDE_BITS=side_bits,
            HAS_SIDE=basis is not None, num_warps=num_warps)
    return EncodedKV(k_codes=kc, k_scale=ks, k_zero=kz, v_codes=vc, v_scale=vs, v_zero=vz, key_bits=key_bits,
                     key_group=key_group, value_bits=value_bits, value_group=value_group, head_dim=d,
                     side=side, side_scale=side_scale, side_bits=side_bits, rank=rank)
