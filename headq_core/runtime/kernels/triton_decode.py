"""Triton decode attention over the packed cache (split-K / flash-decoding).

Grid ``(B*Hkv, S)``: the quantized tokens and then the full-precision residual window are cut into
splits of whole ``BN``-token blocks, one program each (a bf16-only cache runs as residual alone).
Every program serves all query heads of its KV head (grouped-query attention, rows padded to
``GP >= 16`` for ``tl.dot``). Per block it loads the code rows once as int32 words
(``[BN, d*bits/32]``), turns them into codes without int-to-float conversions (:func:`unpack_ptx`
on the GPU, :func:`unpack` with float32 magic numbers elsewhere; bit planes are joined back into
channel order in registers), dequantizes with the fp16 scales/zeros of the ``BN/GK`` key groups and
the per-token value groups, adds the HeadQ correction ``sign * <U^T q, c^>`` and keeps an online
softmax. Tokens before the first visible one (a sliding window's start, or per batch row: left
padding) are masked and whole blocks of them skipped; a logit softcap applies ``c*tanh(s/c)``. The
next block is loaded before the current one is used (prefetch by hand). A program that has the
whole row (one split) writes the output; otherwise each writes a normalised partial output and its
log-sum-exp, and :func:`_combine_kernel` merges them in a second launch (a merge by the last program
of each row, in one launch, was 1-6% slower on the H100: docs/benchmarks.md, section 10). Logits
are in base 2 (``q`` is scaled by ``scale * log2(e)``).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from headq_core.runtime.kernels.layout import EncodedKV
from headq_core.runtime.kernels.triton_unpack import unpack, unpack_ptx

LOG2E = 1.4426950408889634


@triton.jit
def _softmax_step(m, l, s):
    """Online-softmax step over s [GP, BN] base-2 logits: (new max, new sum, rescale of the old
    accumulators [GP], probabilities fp16 [GP, BN])."""
    m_new = tl.maximum(m, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    return m_new, l * alpha + tl.sum(p, axis=1), alpha, p.to(tl.float16)


@triton.jit
def _side_logits(qu, sc_row, ss_row, tok, end, RANK, RP: tl.constexpr, SIDE_BITS: tl.constexpr):
    """<sign * U^T q, c^_j> [GP, BN] for the tokens ``tok`` [BN] below ``end`` (side code rows at sc_row)."""
    rc = tl.arange(0, RP)
    mask = (tok < end)[:, None] & (rc < RANK)[None, :]
    if SIDE_BITS == 4:
        b = tl.load(sc_row + tok[:, None] * ((RANK + 1) // 2) + (rc // 2)[None, :], mask=mask, other=0)
        nib = ((b >> ((rc % 2) * 4).to(tl.uint8)[None, :]) & 15).to(tl.float32)
        cs = tl.where(nib >= 8.0, nib - 16.0, nib)
    else:
        cs = tl.load(sc_row + tok[:, None] * RANK + rc[None, :], mask=mask, other=0)
        cs = cs.to(tl.float32)
    if SIDE_BITS != 16:
        cs = cs * tl.load(ss_row + tok, mask=tok < end, other=0.0).to(tl.float32)[:, None]
    return tl.dot(qu, tl.trans(cs))


@triton.jit
def _load_block(kc_row, ks_row, kz_row, vc_row, vs_row, vz_row, n0, end,
                D: tl.constexpr, GK: tl.constexpr, KBITS: tl.constexpr, GV: tl.constexpr,
                VBITS: tl.constexpr, BN: tl.constexpr):
    """Raw words and scales of the ``BN`` quantized tokens from ``n0`` (those from ``end`` masked
    off): key codes int32 [BN, d*kb/32], key scale/zero fp16 [BN/GK, d], value codes int32
    [BN, d*vb/32], value scale/zero fp16 [BN, d/GV]."""
    KWW: tl.constexpr = D * KBITS // 32
    VWW: tl.constexpr = D * VBITS // 32
    NG: tl.constexpr = D // GV
    NGB: tl.constexpr = BN // GK
    tok = n0 + tl.arange(0, BN)
    grp = n0 // GK + tl.arange(0, NGB)
    cols = tl.arange(0, D)
    tm = (tok < end)[:, None]
    gm = (grp * GK < end)[:, None]
    kw = tl.load(kc_row + tok[:, None] * KWW + tl.arange(0, KWW)[None, :], mask=tm, other=0)
    ks = tl.load(ks_row + grp[:, None] * D + cols[None, :], mask=gm, other=0.0)
    kz = tl.load(kz_row + grp[:, None] * D + cols[None, :], mask=gm, other=0.0)
    vw = tl.load(vc_row + tok[:, None] * VWW + tl.arange(0, VWW)[None, :], mask=tm, other=0)
    voff = tok[:, None] * NG + tl.arange(0, NG)[None, :]
    vs = tl.load(vs_row + voff, mask=tm, other=0.0)
    vz = tl.load(vz_row + voff, mask=tm, other=0.0)
    return kw, ks, kz, vw, vs, vz


@triton.jit
def _capped(s, cap2):
    """``cap2 * tanh(s / cap2)`` of base-2 logits s (``cap2 = softcap * log2(e)``), by one exp2."""
    x = s / cap2
    t = tl.exp2(-2.8853900817779268 * tl.abs(x))  # e^(-2|x|)
    th = (1.0 - t) / (1.0 + t)
    return cap2 * tl.where(x < 0.0, -th, th)


@triton.jit
def _finish_logits(s, tok, end, vis, cap2, SOFTCAP: tl.constexpr):
    """Logits [GP, BN] of the tokens ``tok`` [BN]: capped with a softcap, -inf outside ``[vis, end)``."""
    if SOFTCAP:
        s = _capped(s, cap2)
    return tl.where(((tok < end) & (tok >= vis))[None, :], s, float("-inf"))


@triton.jit
def _quantized_split(q, q16, qu, kc_row, ks_row, kz_row, vc_row, vs_row, vz_row, sc_row, ss_row, first, end,
                     vis, RANK, qk_scale, cap2, m, l, acc, D: tl.constexpr, GK: tl.constexpr,
                     KBITS: tl.constexpr, GV: tl.constexpr, VBITS: tl.constexpr, RP: tl.constexpr,
                     SIDE_BITS: tl.constexpr, HAS_SIDE: tl.constexpr, BN: tl.constexpr, PTX: tl.constexpr,
                     SOFTCAP: tl.constexpr):
    """Online softmax over the quantized tokens ``[first, end)`` from the first visible one ``vis``
    (whole blocks before it are skipped); returns the updated (m, l, acc)."""
    NG: tl.constexpr = D // GV
    NGB: tl.constexpr = BN // GK
    start = first + tl.maximum(vis - first, 0) // BN * BN  # stays on a key-group boundary
    kw, ks, kz, vw, vs, vz = _load_block(kc_row, ks_row, kz_row, vc_row, vs_row, vz_row, start, end,
                                         D, GK, KBITS, GV, VBITS, BN)
    for n0 in range(start, end, BN):
        nxt = _load_block(kc_row, ks_row, kz_row, vc_row, vs_row, vz_row, n0 + BN, end,
                          D, GK, KBITS, GV, VBITS, BN)
        if PTX:  # fp16 codes and dequantization (one rounding, as the fp32 path's cast)
            codes = tl.reshape(unpack_ptx(kw, BN, D, KBITS), (NGB, GK, D))
            kh = tl.reshape(codes * ks[:, None, :] + kz[:, None, :], (BN, D))
        else:
            codes = tl.reshape(unpack(kw, BN, D, KBITS), (NGB, GK, D))
            kh = codes * ks.to(tl.float32)[:, None, :] + kz.to(tl.float32)[:, None, :]
            kh = tl.reshape(kh, (BN, D))
        s = tl.dot(q16, tl.trans(kh.to(tl.float16)))  # [GP, BN]
        tok = n0 + tl.arange(0, BN)
        if HAS_SIDE:
            s += _side_logits(qu, sc_row, ss_row, tok, end, RANK, RP, SIDE_BITS)
        s = _finish_logits(s * qk_scale, tok, end, vis, cap2, SOFTCAP)
        if PTX:
            vcodes = tl.reshape(unpack_ptx(vw, BN, D, VBITS), (BN, NG, GV))
            vh = vcodes * vs[:, :, None] + vz[:, :, None]
        else:
            vcodes = tl.reshape(unpack(vw, BN, D, VBITS), (BN, NG, GV))
            vh = vcodes * vs.to(tl.float32)[:, :, None] + vz.to(tl.float32)[:, :, None]
        m, l, alpha, p = _softmax_step(m, l, s)
        acc = acc * alpha[:, None] + tl.dot(p, tl.reshape(vh, (BN, D)).to(tl.float16))
        kw, ks, kz, vw, vs, vz = nxt
    return m, l, acc


@triton.jit
def _residual_split(q16, kr_row, vr_row, first, end, vis, qk_scale, cap2, m, l, acc, D: tl.constexpr,
                    BN: tl.constexpr, SOFTCAP: tl.constexpr):
    """Online softmax over the full-precision residual tokens ``[first, end)`` from ``vis`` on."""
    cols = tl.arange(0, D)
    start = first + tl.maximum(vis - first, 0) // BN * BN
    for n0 in range(start, end, BN):
        tok = n0 + tl.arange(0, BN)
        tm = (tok < end)[:, None]
        kr = tl.load(kr_row + tok[:, None] * D + cols[None, :], mask=tm, other=0.0)
        s = _finish_logits(tl.dot(q16, tl.trans(kr.to(tl.float16))) * qk_scale, tok, end, vis, cap2, SOFTCAP)
        vr = tl.load(vr_row + tok[:, None] * D + cols[None, :], mask=tm, other=0.0)
        m, l, alpha, p = _softmax_step(m, l, s)
        acc = acc * alpha[:, None] + tl.dot(p, vr.to(tl.float16))
    return m, l, acc


@triton.jit
def _decode_kernel(q_ptr, kc_ptr, ks_ptr, kz_ptr, vc_ptr, vs_ptr, vz_ptr, sc_ptr, ss_ptr, u_ptr,
                   kr_ptr, vr_ptr, o_ptr, lse_ptr, out_ptr, row_start_ptr,
                   s_kc, s_ks, s_vc, s_vs, s_sc, s_ss, s_kr, s_vr,  # strides of the token-major (b, h) rows
                   H, N, R, RANK, TOK_PER_SPLIT, N_QSPLITS, S, FIRST, qk_scale, sign, cap2,
                   GROUP: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, GK: tl.constexpr,
                   KBITS: tl.constexpr, GV: tl.constexpr, VBITS: tl.constexpr, RP: tl.constexpr,
                   SIDE_BITS: tl.constexpr, HAS_SIDE: tl.constexpr, BN: tl.constexpr, PTX: tl.constexpr,
                   ROW_START: tl.constexpr, SOFTCAP: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    h = bh % H
    rows = tl.arange(0, GP)
    cols = tl.arange(0, D)
    qrow = bh * GROUP + rows  # query head row in [B*Hq]
    rvalid = rows < GROUP
    vis = FIRST  # first visible token (quantized ones first, then the residual)
    if ROW_START:
        vis = tl.maximum(vis, tl.load(row_start_ptr + bh // H).to(tl.int32))
    q = tl.load(q_ptr + qrow[:, None] * D + cols[None, :], mask=rvalid[:, None], other=0.0)
    q16 = q.to(tl.float16)  # dot operands are fp16 (keys are fp16-range by construction); logits fp32
    m = tl.full((GP,), float("-inf"), tl.float32)
    l = tl.zeros((GP,), tl.float32)
    acc = tl.zeros((GP, D), tl.float32)
    if split < N_QSPLITS:
        qu = tl.zeros((GP, RP), tl.float32)
        if HAS_SIDE:
            rc = tl.arange(0, RP)
            u = tl.load(u_ptr + (h * D + cols[:, None]) * RANK + rc[None, :], mask=rc[None, :] < RANK,
                        other=0.0)
            qu = tl.dot(q.to(tl.float32), u, input_precision="ieee") * sign  # [GP, RP]
        first = split * TOK_PER_SPLIT
        m, l, acc = _quantized_split(
            q, q16, qu, kc_ptr + bh * s_kc, ks_ptr + bh * s_ks, kz_ptr + bh * s_ks, vc_ptr + bh * s_vc,
            vs_ptr + bh * s_vs, vz_ptr + bh * s_vs, sc_ptr + bh * s_sc, ss_ptr + bh * s_ss, first,
            tl.minimum(first + TOK_PER_SPLIT, N), vis, RANK, qk_scale, cap2, m, l, acc, D, GK, KBITS, GV,
            VBITS, RP, SIDE_BITS, HAS_SIDE, BN, PTX, SOFTCAP)
    else:
        first = (split - N_QSPLITS) * TOK_PER_SPLIT
        m, l, acc = _residual_split(q16, kr_ptr + bh * s_kr, vr_ptr + bh * s_vr, first,
                                    tl.minimum(first + TOK_PER_SPLIT, R), vis - N, qk_scale, cap2, m, l, acc,
                                    D, BN, SOFTCAP)
    l_safe = tl.where(l == 0.0, 1.0, l)
    if S == 1:  # one split: the output itself
        res = (acc / l_safe[:, None]).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + qrow[:, None] * D + cols[None, :], res, mask=rvalid[:, None])
    else:
        out_rows = qrow * S + split
        tl.store(o_ptr + out_rows[:, None] * D + cols[None, :], acc / l_safe[:, None], mask=rvalid[:, None])
        tl.store(lse_ptr + out_rows, tl.where(l == 0.0, float("-inf"), m + tl.log2(l_safe)), mask=rvalid)


@triton.jit
def _combine_kernel(o_ptr, lse_ptr, out_ptr, S, D: tl.constexpr, DC: tl.constexpr, SB: tl.constexpr):
    """The split merge, a second launch: out[row, cols] = sum_s 2^lse_s o_s /
    sum_s 2^lse_s over the S splits of one query row, for the ``DC`` columns of program (row, column
    block); ``SB`` splits per step (one step when S <= SB), with a running maximum."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * DC + tl.arange(0, DC)
    m = tl.max(tl.full((SB,), float("-inf"), tl.float32), axis=0)
    den = tl.sum(tl.zeros((SB,), tl.float32), axis=0)
    acc = tl.zeros((DC,), tl.float32)
    for s0 in range(0, S, SB):
        sp = s0 + tl.arange(0, SB)
        lse = tl.load(lse_ptr + row * S + sp, mask=sp < S, other=float("-inf"))
        o = tl.load(o_ptr + (row * S + sp)[:, None] * D + cols[None, :], mask=(sp < S)[:, None], other=0.0)
        m_new = tl.maximum(m, tl.max(lse, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - m_safe)
        w = tl.exp2(lse - m_safe)
        den = den * alpha + tl.sum(w, axis=0)
        acc = acc * alpha + tl.sum(w[:, None] * o, axis=0)
        m = m_new
    tl.store(out_ptr + row * D + cols, (acc / den).to(out_ptr.dtype.element_ty))


def _rows(t: torch.Tensor, heads: int) -> tuple[torch.Tensor, int]:
    """(t, stride between (b, h) blocks) for t [B, H, n, w]; copies only if t is not (b, h)-uniform
    with contiguous rows (a token-slice of a preallocated buffer needs no copy)."""
    if t.stride(-1) != 1 or t.stride(2) != t.shape[3] or t.stride(0) != heads * t.stride(1):
        t = t.contiguous()
    return t, t.stride(1)


def default_splits(batch_heads: int, tokens: int, block: int, device: torch.device, per_sm: int = 8,
                   max_splits: int = 32) -> int:
    """Token splits per (batch, KV head) so that about ``per_sm`` programs run per multiprocessor,
    at most ``max_splits`` (0: no cap) and at most one per ``block`` tokens."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    cap = max_splits or triton.cdiv(tokens, block)
    return max(1, min(triton.cdiv(per_sm * sms, batch_heads), cap, triton.cdiv(tokens, block)))


def _row_start(start: int | torch.Tensor, b: int, device: torch.device) -> tuple[int, torch.Tensor | None]:
    """(first visible token for every row, per-row int32 starts [B] or None) of ``start``."""
    if isinstance(start, torch.Tensor):
        return 0, start.to(device=device, dtype=torch.int32).reshape(b).contiguous()
    return int(start), None


def decode_attention_triton(q: torch.Tensor, enc: EncodedKV | None, k_res: torch.Tensor | None,
                            v_res: torch.Tensor | None, basis: torch.Tensor | None, scale: float,
                            sign: int, num_splits: int | None = None, block: int = 128,
                            num_warps: int = 4, num_stages: int = 1, per_sm: int = 8, max_splits: int = 32,
                            ptx: bool | None = None, maxnreg: int | None = None,
                            start: int | torch.Tensor = 0, softcap: float | None = None) -> torch.Tensor:
    """Triton path of :func:`headq_core.runtime.kernels.decode_attention` (inputs already validated):
    q [B, Hq, 1, d] -> [B, Hq, 1, d]; ``block`` tokens per loop step (rounded up to whole key
    groups), ``num_warps`` / ``num_stages`` per program, about ``per_sm`` programs per multiprocessor
    and at most ``max_splits`` splits per (batch, KV head) (defaults: the split counts that were
    fastest in the H200 sweep at every tuned shape, docs/benchmarks.md);
    ``ptx`` unpacks codes with inline PTX (:func:`unpack_ptx`; default: when compiled for a GPU, not
    under ``TRITON_INTERPRET=1``), else with float32 arithmetic (:func:`unpack`); ``maxnreg`` caps the
    registers per thread (more programs per multiprocessor). ``start``: first visible token (int, or
    int tensor [B] per row); ``softcap``: logit soft-capping."""
    if ptx is None:
        ptx = q.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1"
    b, hq, _, d = q.shape
    ref = enc.k_codes if enc is not None else k_res
    assert ref is not None
    h = ref.shape[1]
    group = hq // h
    n = enc.tokens if enc is not None else 0
    r_len = k_res.shape[2] if k_res is not None else 0
    step = triton.cdiv(block, enc.key_group) * enc.key_group if enc is not None else block
    target = num_splits or default_splits(b * h, n + r_len, step, q.device, per_sm, max_splits)
    tok_per_split = triton.cdiv(triton.cdiv(n + r_len, target), step) * step
    n_q = triton.cdiv(n, tok_per_split)
    splits = n_q + triton.cdiv(r_len, tok_per_split)
    qs = q.reshape(b * hq, d).contiguous()
    out = torch.empty(b * hq, d, dtype=q.dtype, device=q.device)
    o_part = torch.empty(b * hq, splits, d, dtype=torch.float32, device=q.device)  # unused at S = 1
    lse = torch.empty(b * hq, splits, dtype=torch.float32, device=q.device)
    first, row_start = _row_start(start, b, q.device)
    # pointers of absent parts still need their dtypes: both branches of the kernel are compiled
    word = torch.empty(1, dtype=torch.int32, device=q.device)
    byte = torch.empty(1, dtype=torch.int8, device=q.device)
    half = torch.empty(1, dtype=torch.float16, device=q.device)
    dummy = {"k_codes": word, "v_codes": word, "side": byte, "k_scale": half, "k_zero": half,
             "v_scale": half, "v_zero": half, "side_scale": half, "k_res": qs, "v_res": qs}
    tensors = {}
    if enc is not None:
        for name in ("k_codes", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero"):
            tensors[name] = _rows(getattr(enc, name), h)
        for name in ("k_codes", "v_codes"):  # read as int32 words (rows are whole words)
            codes, _ = tensors[name]
            if codes.data_ptr() % 4:
                codes = codes.clone(memory_format=torch.contiguous_format)
            codes = codes.view(torch.int32)
            tensors[name] = (codes, codes.stride(1))
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
        t.get("k_res", dummy["k_res"]), t.get("v_res", dummy["v_res"]), o_part, lse, out,
        word if row_start is None else row_start,
        st.get("k_codes", 0), st.get("k_scale", 0), st.get("v_codes", 0), st.get("v_scale", 0),
        st.get("side", 0), st.get("side_scale", 0), st.get("k_res", 0), st.get("v_res", 0),
        h, n, r_len, max(rank, 1), tok_per_split, n_q, splits, first, scale * LOG2E, float(sign),
        (softcap or 1.0) * LOG2E,
        GROUP=group, GP=max(16, triton.next_power_of_2(group)), D=d,
        # without an encoding the quantized branch never runs, but it is compiled: give it legal shapes
        GK=enc.key_group if enc is not None else 16, KBITS=enc.key_bits if enc is not None else 8,
        GV=enc.value_group if enc is not None else 16, VBITS=enc.value_bits if enc is not None else 8,
        RP=max(16, triton.next_power_of_2(max(rank, 1))), SIDE_BITS=enc.side_bits if enc is not None else 8,
        HAS_SIDE=rank > 0, BN=step, PTX=ptx, ROW_START=row_start is not None, SOFTCAP=softcap is not None,
        num_warps=num_warps, num_stages=num_stages,
        **({"maxnreg": maxnreg} if maxnreg else {}))
    if splits > 1:
        dc = min(d, 32)  # (query row, 32 columns) per program: all splits in one step up to 256 of them
        _combine_kernel[(b * hq, d // dc)](o_part, lse, out, splits, D=d, DC=dc,
                                           SB=min(256, max(2, triton.next_power_of_2(splits))))
    return out.reshape(b, hq, 1, d)
