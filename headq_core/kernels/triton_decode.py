"""Triton decode attention over the packed cache (split-K / flash-decoding).

Grid ``(B*Hkv, S)``: the quantized tokens and then the full-precision residual window are cut into
splits of the same number of tokens, one program each (a bf16-only cache runs as residual alone).
Every program serves all query heads of its KV head (grouped-query attention, rows padded to
``GP >= 16`` for ``tl.dot``), unpacks the bit-packed codes in registers, dequantizes them with the
fp16 scales/zeros, adds the HeadQ correction ``sign * <U^T q, c^>`` and keeps an online softmax; it
writes a normalised partial output and its log-sum-exp. :func:`_combine_kernel` merges the splits.
Logits are in base 2 (``q`` is scaled by ``scale * log2(e)`` on load).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from headq_core.kernels.layout import EncodedKV

LOG2E = 1.4426950408889634


@triton.jit
def load_codes(row_ptr, cols, BITS: tl.constexpr):
    """Codes [ROWS, len(cols)] float32 of the little-endian bitstream rows at ``row_ptr`` [ROWS]:
    code ``c`` is bits ``(c % per) * BITS`` of byte ``c // per``. Neighbouring columns read the same
    byte, so each thread loads it once (no shuffles or shared memory to unpack)."""
    PER: tl.constexpr = 8 // BITS
    b = tl.load(row_ptr[:, None] + (cols // PER)[None, :])
    return ((b >> ((cols % PER) * BITS).to(tl.uint8)[None, :]) & ((1 << BITS) - 1)).to(tl.float32)


@triton.jit
def _online_update(m, l, acc, s, vals):
    """One online-softmax step: s [GP, BN] base-2 logits, vals [BN, D] fp16."""
    m_new = tl.maximum(m, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), vals)
    return m_new, l, acc


@triton.jit
def _side_logits(qu, sc_ptr, ss_ptr, tok, RANK, GK: tl.constexpr, RP: tl.constexpr, SIDE_BITS: tl.constexpr):
    """<sign * U^T q, c^_j> [GP, GK] for the GK tokens ``tok`` (side code row pointers at sc_ptr)."""
    rc = tl.arange(0, RP)
    if SIDE_BITS == 4:
        b = tl.load(sc_ptr + tok[:, None] * ((RANK + 1) // 2) + (rc // 2)[None, :], mask=rc[None, :] < RANK,
                    other=0)
        nib = ((b >> ((rc % 2) * 4).to(tl.uint8)[None, :]) & 15).to(tl.float32)
        cs = tl.where(nib >= 8.0, nib - 16.0, nib)
    else:
        cs = tl.load(sc_ptr + tok[:, None] * RANK + rc[None, :], mask=rc[None, :] < RANK, other=0)
        cs = cs.to(tl.float32)
    if SIDE_BITS != 16:
        cs = cs * tl.load(ss_ptr + tok).to(tl.float32)[:, None]
    return tl.dot(qu, tl.trans(cs))


@triton.jit
def _decode_kernel(q_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, sc_ptr, ss_ptr, u_ptr,
                   kr_ptr, vr_ptr, o_ptr, lse_ptr,
                   s_kc, s_ks, s_vc, s_vs, s_sc, s_ss, s_kr, s_vr,  # strides of the token-major (b, h) rows
                   H, N, R, RANK, TOK_PER_SPLIT, N_QSPLITS, S, qk_scale, sign,
                   GROUP: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, GK: tl.constexpr,
                   KBITS: tl.constexpr, GV: tl.constexpr, VBITS: tl.constexpr, RP: tl.constexpr,
                   SIDE_BITS: tl.constexpr, HAS_SIDE: tl.constexpr, BN: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    h = bh % H
    rows = tl.arange(0, GP)
    cols = tl.arange(0, D)
    qrow = bh * GROUP + rows  # query head row in [B*Hq]
    rvalid = rows < GROUP
    q = tl.load(q_ptr + qrow[:, None] * D + cols[None, :], mask=rvalid[:, None], other=0.0)
    q16 = q.to(tl.float16)  # dot operands are fp16 (keys are fp16-range by construction); logits fp32
    m = tl.full((GP,), float("-inf"), tl.float32)
    l = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, D), tl.float32)
    if split < N_QSPLITS:
        if HAS_SIDE:
            rc = tl.arange(0, RP)
            u = tl.load(u_ptr + (h * D + cols[:, None]) * RANK + rc[None, :], mask=rc[None, :] < RANK,
                        other=0.0)
            qu = tl.dot(q.to(tl.float32), u, input_precision="ieee") * sign  # [GP, RP]
        KW: tl.constexpr = D * KBITS // 8
        VW: tl.constexpr = D * VBITS // 8
        NG: tl.constexpr = D // GV
        start = split * TOK_PER_SPLIT
        end = tl.minimum(start + TOK_PER_SPLIT, N)
        # one key group per step: every token is valid (splits hold whole groups), scales are [D] rows
        for n0 in range(start, end, GK):
            tok = n0 + tl.arange(0, GK)
            g = bh * s_ks + (n0 // GK) * D + cols
            kh = load_codes(kc_ptr + bh * s_kc + tok * KW, cols, KBITS) \
                * tl.load(ks_ptr + g).to(tl.float32)[None, :] + tl.load(kz_ptr + g).to(tl.float32)[None, :]
            s = tl.dot(q16, tl.trans(kh.to(tl.float16)))  # [GP, GK]
            if HAS_SIDE:
                s += _side_logits(qu, sc_ptr + bh * s_sc, ss_ptr + bh * s_ss, tok, RANK, GK, RP, SIDE_BITS)
            voff = bh * s_vs + tok[:, None] * NG + (cols // GV)[None, :]  # [GK, D], one group per GV columns
            vh = load_codes(vc_ptr + bh * s_vc + tok * VW, cols, VBITS) \
                * tl.load(vs_ptr + voff).to(tl.float32) + tl.load(vz_ptr + voff).to(tl.float32)
            m, l, acc = _online_update(m, l, acc, s * qk_scale, vh.to(tl.float16))
    else:
        start = (split - N_QSPLITS) * TOK_PER_SPLIT
        end = tl.minimum(start + TOK_PER_SPLIT, R)
        for n0 in range(start, end, BN):
            tok = n0 + tl.arange(0, BN)
            tv = tok < end
            tm = tv[:, None]
            kr = tl.load(kr_ptr + bh * s_kr + tok[:, None] * D + cols[None, :], mask=tm, other=0.0)
            s = tl.dot(q16, tl.trans(kr.to(tl.float16))) * qk_scale
            s = tl.where(tv[None, :], s, float("-inf"))
            vr = tl.load(vr_ptr + bh * s_vr + tok[:, None] * D + cols[None, :], mask=tm, other=0.0)
            m, l, acc = _online_update(m, l, acc, s, vr.to(tl.float16))
    l_safe = tl.where(l == 0.0, 1.0, l)
    out_rows = qrow * S + split
    tl.store(o_ptr + out_rows[:, None] * D + cols[None, :], acc / l_safe[:, None], mask=rvalid[:, None])
    tl.store(lse_ptr + out_rows, tl.where(l == 0.0, float("-inf"), m + tl.log2(l_safe)), mask=rvalid)


@triton.jit
def _combine_kernel(o_ptr, lse_ptr, out_ptr, S, D: tl.constexpr, SP: tl.constexpr):
    """out[row] = sum_s 2^(lse_s - max) o_s / sum_s 2^(lse_s - max), one program per query row."""
    row = tl.program_id(0)
    sp = tl.arange(0, SP)
    cols = tl.arange(0, D)
    lse = tl.load(lse_ptr + row * S + sp, mask=sp < S, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, axis=0))
    o = tl.load(o_ptr + (row * S + sp)[:, None] * D + cols[None, :], mask=(sp < S)[:, None], other=0.0)
    out = tl.sum(w[:, None] * o, axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + row * D + cols, out.to(out_ptr.dtype.element_ty))


def _rows(t: torch.Tensor, heads: int) -> tuple[torch.Tensor, int]:
    """(t, stride between (b, h) blocks) for t [B, H, n, w]; copies only if t is not (b, h)-uniform
    with contiguous rows (a token-slice of a preallocated buffer needs no copy)."""
    if t.stride(-1) != 1 or t.stride(2) != t.shape[3] or t.stride(0) != heads * t.stride(1):
        t = t.contiguous()
    return t, t.stride(1)


def default_splits(batch_heads: int, tokens: int, block: int, device: torch.device, per_sm: int = 4) -> int:
    """Token splits so that about ``per_sm`` programs run per multiprocessor."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(triton.cdiv(per_sm * sms, batch_heads), triton.cdiv(tokens, block)))


def decode_attention_triton(q: torch.Tensor, enc: EncodedKV | None, k_res: torch.Tensor | None,
                            v_res: torch.Tensor | None, basis: torch.Tensor | None, scale: float,
                            sign: int, num_splits: int | None = None, block: int = 64,
                            num_warps: int = 2, num_stages: int = 2, per_sm: int = 4) -> torch.Tensor:
    """Triton path of :func:`headq_core.kernels.decode_attention` (inputs already validated):
    q [B, Hq, 1, d] -> [B, Hq, 1, d]; ``block`` residual tokens per loop step, ``num_warps`` /
    ``num_stages`` per program, about ``per_sm`` programs per multiprocessor."""
    b, hq, _, d = q.shape
    ref = enc.k_codes if enc is not None else k_res
    assert ref is not None
    h = ref.shape[1]
    group = hq // h
    n = enc.tokens if enc is not None else 0
    r_len = k_res.shape[2] if k_res is not None else 0
    target = num_splits or default_splits(b * h, n + r_len, block, q.device, per_sm)
    step = max(block, enc.key_group if enc is not None else 1)
    tok_per_split = triton.cdiv(triton.cdiv(n + r_len, target), step) * step
    n_q = triton.cdiv(n, tok_per_split)
    splits = n_q + triton.cdiv(r_len, tok_per_split)
    qs = q.reshape(b * hq, d).contiguous()
    o_part = torch.empty(b * hq, splits, d, dtype=torch.float32, device=q.device)
    lse = torch.empty(b * hq, splits, dtype=torch.float32, device=q.device)
    # pointers of absent parts still need their dtypes: both branches of the kernel are compiled
    byte = torch.empty(1, dtype=torch.uint8, device=q.device)
    half = torch.empty(1, dtype=torch.float16, device=q.device)
    dummy = {"k_codes": byte, "v_codes": byte, "side": byte.view(torch.int8), "k_scale": half, "k_zero": half,
             "v_scale": half, "v_zero": half, "side_scale": half, "k_res": qs, "v_res": qs}
    tensors = {}
    if enc is not None:
        for name in ("k_codes", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero"):
            tensors[name] = _rows(getattr(enc, name), h)
    if enc is not None and enc.side is not None:
        tensors["side"] = _rows(enc.side, h)
        if enc.side_scale is not None:
            tensors["side_scale"] = _rows(enc.side_scale.unsqueeze(-1), h)
    if r_len:
        tensors["k_res"], tensors["v_res"] = _rows(k_res, h), _rows(v_res, h)  # type: ignore[arg-type]
    t = {k: v[0] for k, v in tensors.items()}
    st = {k: v[1] for k, v in tensors.items()}
    rank = enc.rank if enc is not None and enc.side is not None else 0
    u = basis.to(device=q.device, dtype=torch.float32).contiguous() if rank and basis is not None else o_part
    _decode_kernel[(b * h, splits)](
        qs, *(t.get(name, dummy[name]) for name in ("k_codes", "k_scale", "k_zero", "v_codes", "v_scale",
                                                     "v_zero", "side", "side_scale")), u,
        t.get("k_res", dummy["k_res"]), t.get("v_res", dummy["v_res"]), o_part, lse,
        st.get("k_codes", 0), st.get("k_scale", 0), st.get("v_codes", 0), st.get("v_scale", 0),
        st.get("side", 0), st.get("side_scale", 0), st.get("k_res", 0), st.get("v_res", 0),
        h, n, r_len, max(rank, 1), tok_per_split, n_q, splits, scale * LOG2E, float(sign),
        GROUP=group, GP=max(16, triton.next_power_of_2(group)), D=d,
        # without an encoding the quantized branch never runs, but it is compiled: give it legal shapes
        GK=enc.key_group if enc is not None else 16, KBITS=enc.key_bits if enc is not None else 8,
        GV=enc.value_group if enc is not None else 16, VBITS=enc.value_bits if enc is not None else 8,
        RP=max(16, triton.next_power_of_2(max(rank, 1))), SIDE_BITS=enc.side_bits if enc is not None else 8,
        HAS_SIDE=rank > 0, BN=block, num_warps=num_warps, num_stages=num_stages)
    out = torch.empty(b * hq, d, dtype=q.dtype, device=q.device)
    _combine_kernel[(b * hq,)](o_part, lse, out, splits, D=d, SP=max(2, triton.next_power_of_2(splits)))
    return out.reshape(b, hq, 1, d)
