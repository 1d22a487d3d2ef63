"""Triton encode: quantize + pack keys, values and the HeadQ side code in one pass.

One program per (batch*kv_head, ``GPP`` key groups of ``GK`` tokens). Keys run over 8-channel
chunks of head_dim (16-byte loads) in a [T, GPP, S, 8] tile: each of the S lanes of a group holds
T = GK/S of its tokens, so per-channel min/max reduce in-thread, then over S lanes, and each thread
carries the side code ``c = U^T (k - k^)`` of its tokens as float32 FMA chains over head_dim in
order (how the previous kernel's FMA dot summed: the same side codes on the GPU). Values run over
blocks of MV tokens, a thread holding up to 32 channels of a value group.

Numerics match :mod:`headq_core.runtime.kernels.reference` bit for bit: fp16-rounded scales,
``x / scale`` correctly rounded without a division instruction (:func:`reciprocal`,
:func:`divide`), then clamp and round half to even (``+ 1.5 * 2**23``, whose bits hold the code).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from headq_core.method.packing import packed_size
from headq_core.runtime.kernels.layout import EncodedKV

MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: x + MAGIC rounds x to an integer (ties to even), |x| <= 2**22


@triton.jit
def round_half_even(y):
    """torch.round for float32 tensors (ties to even), exact for ``|y| <= 2**22``: adding 1.5 * 2**23
    lands in [2**23, 2**24), where the float32 spacing is 1, so the FPU's round-to-nearest-even
    rounds ``y`` to an integer; subtracting it again is exact."""
    return (y + MAGIC) - MAGIC


@triton.jit
def reciprocal(b):
    """``(b', y)`` for dividing by fp16-valued ``b > 0`` (float32 tensors): b' = min(b, FLT_MAX),
    y = RN(1/b'). One Newton step from rsqrt(b')**2 (relative error |d| < 2**-21): the step's
    exact value is (1 - d**2)/b, while 1/b (11 significant bits in b) lies at least 2**-36 (relative)
    from every float32 rounding boundary, so the rounded step is RN(1/b)."""
    b = tl.minimum(b, 3.4028234663852886e38)
    r = tl.math.rsqrt(b)
    y = r * r
    return b, tl.fma(tl.fma(-b, y, 1.0), y, y)


@triton.jit
def divide(a, b, y):
    """RN(a / b) for float32 ``a`` and a divisor ``(b, y)`` from :func:`reciprocal`: one Markstein
    correction of ``a * y``. Exact for every pair of significands (checked exhaustively offline: all
    2**23 float32 significands x all 2**10 fp16 ones), hence for every ``|a| >= 2**-69``, where no
    step is subnormal; smaller ``a`` give ``|a / b| < 2**-45``, and b = inf (an fp16 overflow,
    clamped to FLT_MAX) gives a/FLT_MAX: every use rounds those to 0, as it does a/inf."""
    q = a * y
    return tl.fma(tl.fma(-b, q, a), y, q)


@triton.jit
def fp16_scale(span, QMAX: tl.constexpr):
    """fp16-rounded ``span / QMAX`` as float32, 1 where it rounds to 0."""
    qb, qy = reciprocal(tl.full((), QMAX, tl.float32))
    s = divide(span, qb, qy).to(tl.float16).to(tl.float32)
    return tl.where(s == 0.0, 1.0, s)


@triton.jit
def quotient(a, s, LO: tl.constexpr, HI: tl.constexpr):
    """``clamp(a / s, LO, HI)`` of float32 ``a`` by fp16-valued scales ``s`` (broadcasting with
    ``a``; one reciprocal per scale), the division correctly rounded."""
    b, y = reciprocal(s)
    return tl.minimum(tl.maximum(divide(a, b, y), LO), HI)


@triton.jit
def code_bits(q):
    """int32 whose low 22 bits are ``round(q)`` in two's complement (float32 ``|q| <= 2**21``)."""
    return (q + MAGIC).to(tl.int32, bitcast=True)


@triton.jit
def pack_last(q, BITS: tl.constexpr, SIGNED: tl.constexpr):
    """Clamped quotients float32 [A, B, C, W] -> their codes as uint8 [A, B, C, W*BITS/8], a
    little-endian bitstream along the last axis. Unsigned codes need no masks: ``code_bits`` sums
    ``code << k`` with MAGIC's bits shifted above bit 7 (one shift-add per code)."""
    PER: tl.constexpr = 8 // BITS
    bits = code_bits(q)
    if SIGNED:
        bits = bits & ((1 << BITS) - 1)
    grouped = tl.reshape(bits, (q.shape[0], q.shape[1], q.shape[2], q.shape[3] // PER, PER))
    return tl.sum(grouped << (tl.arange(0, PER) * BITS), axis=4).to(tl.uint8)


@triton.jit
def _columns8(x):
    """The 8 columns [T, G, S] of x [T, G, S, 8], in order (in-thread: splitting them costs nothing)."""
    e, o = tl.split(tl.reshape(x, (x.shape[0], x.shape[1], x.shape[2], 2, 2, 2)))  # columns 4a + 2b + (0 | 1)
    e0, e1 = tl.split(e)
    o0, o1 = tl.split(o)
    c0, c4 = tl.split(e0)
    c2, c6 = tl.split(e1)
    c1, c5 = tl.split(o0)
    c3, c7 = tl.split(o1)
    return c0, c1, c2, c3, c4, c5, c6, c7


@triton.jit
def _chain4(acc, c0, c1, c2, c3, u_ptr, R: tl.constexpr, RP: tl.constexpr):
    """acc [RP, T, G, S] + U[4 rows, :R]^T [c0 .. c3]: one FMA per output and column, in order."""
    rr = tl.arange(0, RP)
    um = rr < R
    acc = tl.fma(tl.load(u_ptr + rr, mask=um, other=0.0)[:, None, None, None], c0[None], acc)
    acc = tl.fma(tl.load(u_ptr + R + rr, mask=um, other=0.0)[:, None, None, None], c1[None], acc)
    acc = tl.fma(tl.load(u_ptr + 2 * R + rr, mask=um, other=0.0)[:, None, None, None], c2[None], acc)
    return tl.fma(tl.load(u_ptr + 3 * R + rr, mask=um, other=0.0)[:, None, None, None], c3[None], acc)


@triton.jit
def _key_rows(g0, GK: tl.constexpr, GPP: tl.constexpr, S: tl.constexpr):
    """int32 [T, GPP, S]: token t*S + s of group g0 + p, within the head."""
    return ((g0 + tl.arange(0, GPP)[None, :, None]) * GK + tl.arange(0, GK // S)[:, None, None] * S
            + tl.arange(0, S)[None, None, :])


@triton.jit
def _keys(k_ptr, u_ptr, kc_ptr, ks_ptr, kz_ptr, bh, g0, H, N, D: tl.constexpr, GK: tl.constexpr,
          KBITS: tl.constexpr, R: tl.constexpr, RP: tl.constexpr, HAS_SIDE: tl.constexpr,
          GPP: tl.constexpr, S: tl.constexpr):
    """Key groups g0 .. g0+GPP-1 of row bh: codes, fp16 scales / zeros and the side code
    c^T float32 [RP, T, GPP, S] (token t*S + s of group g0 + p; zeros without a basis)."""
    KQ: tl.constexpr = (1 << KBITS) - 1
    KW: tl.constexpr = D * KBITS // 8
    NG = N // GK
    grp = g0 + tl.arange(0, GPP)[None, :, None, None]
    j8 = tl.arange(0, 8)[None, None, None, :]
    live = grp < NG
    row = _key_rows(g0, GK, GPP, S)[:, :, :, None]
    first = (tl.arange(0, GK // S)[:, None, None, None] == 0) & (tl.arange(0, S)[None, None, :, None] == 0)
    one = live & first  # one thread per group stores its scales
    k_head = k_ptr + bh * N * D
    kc_head = kc_ptr + bh * N * KW
    ks_head = ks_ptr + bh * NG * D
    kz_head = kz_ptr + bh * NG * D
    u_head = u_ptr + (bh % H) * D * R
    acc = tl.zeros((RP, GK // S, GPP, S), tl.float32)
    for c in range(D // 8):
        xr = tl.load(k_head + row * D + c * 8 + j8, mask=live)  # [T, GPP, S, 8]
        xmin = tl.min(tl.min(xr, axis=0), axis=1).to(tl.float32)[None, :, None, :]  # in-thread, then lanes
        xmax = tl.max(tl.max(xr, axis=0), axis=1).to(tl.float32)[None, :, None, :]
        lo = xmin.to(tl.float16).to(tl.float32)
        ks = fp16_scale(xmax - xmin, KQ)
        gidx = tl.broadcast_to(grp * D + c * 8 + j8, xr.shape)  # stored in the tile's own layout
        tl.store(ks_head + gidx, tl.broadcast_to(ks.to(tl.float16), xr.shape), mask=one)
        tl.store(kz_head + gidx, tl.broadcast_to(lo.to(tl.float16), xr.shape), mask=one)
        x = xr.to(tl.float32)
        q = quotient(x - lo, ks, 0.0, KQ)
        packed = pack_last(q, KBITS, False)
        u_rows = u_head + c * 8 * R
        if HAS_SIDE:
            r = _columns8(x - tl.fma(round_half_even(q), ks, lo))  # the residual k - k^
            acc = _chain4(acc, r[0], r[1], r[2], r[3], u_rows, R, RP)
        # between the chain's halves: the rows of U for columns 4-7 cannot load before this store
        tl.store(kc_head + row * KW + c * KBITS + tl.arange(0, KBITS)[None, None, None, :], packed, mask=live)
        if HAS_SIDE:
            acc = _chain4(acc, r[4], r[5], r[6], r[7], u_rows + 4 * R, R, RP)
    return acc


@triton.jit
def _side(acc, sc_ptr, ss_ptr, bh, g0, N, GK: tl.constexpr, R: tl.constexpr, RP: tl.constexpr,
          SIDE_BITS: tl.constexpr, GPP: tl.constexpr, S: tl.constexpr):
    """Store the side code c^T [RP, T, GPP, S] of :func:`_keys`: fp16, or int8 / int4 codes with
    per-token fp16 scales (symmetric, amax / (2**(bits-1) - 1))."""
    row = _key_rows(g0, GK, GPP, S)  # [T, GPP, S]
    live = row < N
    rr = tl.arange(0, RP)[:, None, None, None]
    srow = bh * N + row[None]
    if SIDE_BITS == 16:
        tl.store(sc_ptr + srow * R + rr, acc.to(tl.float16), mask=live[None] & (rr < R))
    else:
        SQ: tl.constexpr = 127 if SIDE_BITS == 8 else 7
        ss = fp16_scale(tl.max(tl.abs(acc), axis=0), SQ)
        tl.store(ss_ptr + bh * N + row, ss.to(tl.float16), mask=live)
        q = quotient(acc, ss[None], -SQ, SQ)
        if SIDE_BITS == 8:
            tl.store(sc_ptr + srow * R + rr, code_bits(q).to(tl.int8), mask=live[None] & (rr < R))
        else:
            SW: tl.constexpr = (R + 1) // 2
            wr = tl.arange(0, RP // 2)[None, None, None, :]
            tl.store(sc_ptr + srow.permute(1, 2, 3, 0) * SW + wr, pack_last(q.permute(1, 2, 3, 0), 4, True),
                     mask=live[:, :, :, None] & (wr < SW))


@triton.jit
def _values(v_ptr, vc_ptr, vs_ptr, vz_ptr, bh, n0, N, D: tl.constexpr, GV: tl.constexpr,
            VBITS: tl.constexpr, NT: tl.constexpr, MV: tl.constexpr):
    """Value tokens n0 .. n0+NT-1 of row bh, MV at a time: codes and per-token fp16 scales / zeros
    of each group of GV channels. Tile [VR, MV, NB, VL, 8] of 16-byte loads: with GV >= 8 a thread
    holds VR loads of a group (contiguous channels) that VL lanes share; below, a load holds 8/GV
    groups."""
    VQ: tl.constexpr = (1 << VBITS) - 1
    VW: tl.constexpr = D * VBITS // 8
    NGV: tl.constexpr = D // GV
    VR: tl.constexpr = 4 if GV >= 32 else (GV // 8 if GV >= 8 else 1)  # loads of a group per thread
    VL: tl.constexpr = GV // 32 if GV >= 32 else 1  # lanes per group
    NB: tl.constexpr = D // (8 * VR * VL)
    r5 = tl.arange(0, VR)[:, None, None, None, None]
    b5 = tl.arange(0, NB)[None, None, :, None, None]
    l5 = tl.arange(0, VL)[None, None, None, :, None]
    col = (b5 * VL + l5) * (8 * VR) + r5 * 8 + tl.arange(0, 8)[None, None, None, None, :]
    # a thread's VR * VBITS code bytes of a group are contiguous: one store
    blk = tl.arange(0, NB)[None, :, None, None] * VL + tl.arange(0, VL)[None, None, :, None]
    cbyte = blk * (VR * VBITS) + tl.arange(0, VR * VBITS)[None, None, None, :]
    for i in range(NT // MV):
        tok = bh * N + n0 + i * MV + tl.arange(0, MV)[None, :, None, None, None]  # row of [B*H*N, D]
        live = n0 + i * MV + tl.arange(0, MV)[None, :, None, None, None] < N
        yr = tl.load(v_ptr + tok * D + col, mask=live)
        if GV >= 8:
            ymin = tl.min(tl.min(tl.min(yr, axis=4), axis=0), axis=2).to(tl.float32)[None, :, :, None, None]
            ymax = tl.max(tl.max(tl.max(yr, axis=4), axis=0), axis=2).to(tl.float32)[None, :, :, None, None]
            gidx = tl.arange(0, NGV)[None, None, :, None, None]
            one = live & (l5 == 0)
        else:
            y6 = tl.reshape(yr, (1, MV, NB, 1, 8 // GV, GV))
            ymin = tl.reshape(tl.min(y6, axis=5).to(tl.float32), (1, MV, NB, 1, 8 // GV))
            ymax = tl.reshape(tl.max(y6, axis=5).to(tl.float32), (1, MV, NB, 1, 8 // GV))
            gidx = b5 * (8 // GV) + tl.arange(0, 8 // GV)[None, None, None, None, :]
            one = live
        lo = ymin.to(tl.float16).to(tl.float32)
        vs = fp16_scale(ymax - ymin, VQ)
        sidx, one = tl.broadcast(tok * NGV + gidx, one)
        tl.store(vs_ptr + sidx, tl.broadcast_to(vs.to(tl.float16), sidx.shape), mask=one)
        tl.store(vz_ptr + sidx, tl.broadcast_to(lo.to(tl.float16), sidx.shape), mask=one)
        if GV >= 8:
            q = quotient(yr.to(tl.float32) - lo, vs, 0.0, VQ)
        else:
            q6 = quotient(y6.to(tl.float32) - lo[:, :, :, :, :, None], vs[:, :, :, :, :, None], 0.0, VQ)
            q = tl.reshape(q6, (VR, MV, NB, VL, 8))
        packed = pack_last(tl.reshape(q.permute(1, 2, 3, 0, 4), (MV, NB, VL, VR * 8)), VBITS, False)
        tl.store(vc_ptr + tl.reshape(tok, (MV, 1, 1, 1)) * VW + cbyte, packed,
                 mask=tl.reshape(live, (MV, 1, 1, 1)))


@triton.jit
def _encode_kernel(k_ptr, v_ptr, u_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, sc_ptr, ss_ptr,
                   H, N, D: tl.constexpr, GK: tl.constexpr, KBITS: tl.constexpr, GV: tl.constexpr,
                   VBITS: tl.constexpr, R: tl.constexpr, RP: tl.constexpr, SIDE_BITS: tl.constexpr,
                   HAS_SIDE: tl.constexpr, GPP: tl.constexpr, S: tl.constexpr, MV: tl.constexpr):
    """Program (bh, j): key groups j*GPP .. j*GPP+GPP-1 of row bh (those below N/GK) and their tokens'
    values; k, v [B*H*N, D] in, the :class:`EncodedKV` tensors out."""
    bh = tl.program_id(0).to(tl.int64)
    g0 = tl.program_id(1) * GPP
    acc = _keys(k_ptr, u_ptr, kc_ptr, ks_ptr, kz_ptr, bh, g0, H, N, D, GK, KBITS, R, RP, HAS_SIDE, GPP, S)
    if HAS_SIDE:
        _side(acc, sc_ptr, ss_ptr, bh, g0, N, GK, R, RP, SIDE_BITS, GPP, S)
    _values(v_ptr, vc_ptr, vs_ptr, vz_ptr, bh, g0 * GK, N, D, GV, VBITS, GPP * GK, MV)


def encode_triton(k: torch.Tensor, v: torch.Tensor, key_bits: int, key_group: int, value_bits: int,
                  value_group: int, basis: torch.Tensor | None, side_bits: int, *,
                  groups_per_program: int | None = None, num_warps: int = 1) -> EncodedKV:
    """Triton path of :func:`headq_core.runtime.kernels.encode` (inputs already validated; k, v
    [B, Hkv, N, d] with power-of-two d, key_group >= 16 and value_group, bits dividing 8).

    A program encodes ``groups_per_program`` key groups (a power of two) with ``num_warps`` warps:
    its 32 * num_warps threads split into groups_per_program x S lanes, each thread holding
    T = key_group / S tokens of a group and their T x rank float32 side-code accumulators. The
    default (one warp) takes T = 2 (1 at rank 32): the fastest launch of two H100 sweeps at both
    1 x 32k and 8 x 32k tokens of 8 KV heads (docs/benchmarks.md, sections 10 and 12)."""
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
    rp = max(2, triton.next_power_of_2(max(rank, 1)))
    tokens_per_thread = min(2, max(32 // rp, 1))
    gpp = groups_per_program or max(32 * num_warps * tokens_per_thread // key_group, 1)
    lanes = min(max(32 * num_warps // gpp, 1), key_group)
    mv = min(gpp * key_group, max(2048 * num_warps // d, 1))  # value tokens at a time: ~64 values a thread
    if n:
        _encode_kernel[(b * h, triton.cdiv(n // key_group, gpp))](
            k, v, basis if basis is not None else k, kc, ks, kz, vc, vs, vz,
            side if side is not None else kc, side_scale if side_scale is not None else ks,
            h, n, D=d, GK=key_group, KBITS=key_bits, GV=value_group, VBITS=value_bits, R=max(rank, 1), RP=rp,
            SIDE_BITS=side_bits, HAS_SIDE=basis is not None, GPP=gpp, S=lanes,
            MV=mv, num_warps=num_warps)
    return EncodedKV(k_codes=kc, k_scale=ks, k_zero=kz, v_codes=vc, v_scale=vs, v_zero=vz, key_bits=key_bits,
                     key_group=key_group, value_bits=value_bits, value_group=value_group, head_dim=d,
                     side=side, side_scale=side_scale, side_bits=side_bits, rank=rank)
