"""Pure-torch reference of the kernels: the same math as the Triton paths, in float32.

:func:`encode_reference` builds an :class:`EncodedKV` with :func:`headq_core.method.quant.quantize`
(keys per_channel, values per_token) and the HeadQ side code of the key residual;
:func:`decode_attention_reference` dequantizes everything and runs one decode query through
softmax attention with the HeadQ logit correction. Runs on any device, any bit width.
"""

from __future__ import annotations

import torch

from headq_core.config import QuantConfig
from headq_core.method.headq import SideCode, decode_side, encode_side
from headq_core.method.quant import Packed, dequantize, quantize
from headq_core.runtime.kernels.layout import EncodedKV


def dequantize_side(enc: EncodedKV) -> torch.Tensor:
    """Side code c^ float32 [B, Hkv, N, r] of an encoding that has one."""
    assert enc.side is not None
    return decode_side(SideCode(codes=enc.side, scale=enc.side_scale, bits=enc.side_bits, rank=enc.rank))


def _packed(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, axis: str,
            group: int, d: int) -> Packed:
    shape = (*codes.shape[:-1], d)
    tail = codes.new_zeros((*codes.shape[:-2], 0, d), dtype=torch.float32)
    return Packed(codes=codes, scale=scale, zero=zero, bits=bits, axis=axis, group_size=group,
                  shape=shape, tail=tail, dtype=torch.float32)


def dequantize_kv(enc: EncodedKV) -> tuple[torch.Tensor, torch.Tensor]:
    """(k^, v^) float32 [B, Hkv, N, d], exactly ``code * scale + zero``."""
    d = enc.head_dim
    keys = _packed(enc.k_codes, enc.k_scale, enc.k_zero, enc.key_bits, "per_channel", enc.key_group, d)
    vals = _packed(enc.v_codes, enc.v_scale, enc.v_zero, enc.value_bits, "per_token", enc.value_group, d)
    return dequantize(keys), dequantize(vals)


def encode_reference(k: torch.Tensor, v: torch.Tensor, key_cfg: QuantConfig, value_cfg: QuantConfig,
                     basis: torch.Tensor | None = None, side_bits: int = 8) -> EncodedKV:
    """Quantize k, v [B, Hkv, N, d] (N a multiple of the key group) and, with ``basis`` U
    [Hkv, d, r], the side code ``U^T (k - k^)`` of every token."""
    n, d = k.shape[-2:]
    kp = quantize(k.float(), key_cfg, n_quant=n)
    vp = quantize(v.float(), value_cfg, n_quant=n)
    side = side_scale = None
    rank = 0
    if basis is not None:
        rank = basis.shape[-1]
        resid = k.float() - dequantize(kp)
        code = encode_side(resid, basis, side_bits)
        side, side_scale = code.codes, code.scale
    return EncodedKV(k_codes=kp.codes, k_scale=kp.scale, k_zero=kp.zero, v_codes=vp.codes,
                     v_scale=vp.scale, v_zero=vp.zero, key_bits=key_cfg.bits, key_group=key_cfg.group_size,
                     value_bits=value_cfg.bits, value_group=value_cfg.group_size, head_dim=d, side=side,
                     side_scale=side_scale, side_bits=side_bits, rank=rank)


def decode_attention_reference(q: torch.Tensor, enc: EncodedKV | None, k_res: torch.Tensor | None,
                               v_res: torch.Tensor | None, basis: torch.Tensor | None = None,
                               scale: float | None = None, sign: int = 1, start: int | torch.Tensor = 0,
                               softcap: float | None = None) -> torch.Tensor:
    """One decode query q [B, Hq, 1, d] over the quantized tokens then the residual k_res, v_res
    [B, Hkv, R, d], from token ``start`` on (an int, or an integer tensor [B] per batch row: a
    sliding window, left padding); logits ``scale*<q, k^> + sign*scale*<U^T q, c^>``, then
    ``softcap*tanh(logit/softcap)``. Returns [B, Hq, 1, d] in q.dtype."""
    b, hq, _, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    keys, vals, corr = [], [], None
    hkv = (enc.k_codes if enc is not None else k_res).shape[1]  # type: ignore[union-attr]
    qg = q.float().reshape(b, hkv, hq // hkv, d)  # [B, Hkv, g, d]
    if enc is not None and enc.tokens:
        kh, vh = dequantize_kv(enc)
        keys.append(kh)
        vals.append(vh)
        if enc.side is not None:
            assert basis is not None, "basis: needed to read the HeadQ side code"
            qu = torch.einsum("bhgd,hdr->bhgr", qg, basis.float())
            corr = sign * torch.einsum("bhgr,bhnr->bhgn", qu, dequantize_side(enc))
    if k_res is not None and k_res.shape[2]:
        keys.append(k_res.float())
        vals.append(v_res.float())  # type: ignore[union-attr]
    k_all, v_all = torch.cat(keys, 2), torch.cat(vals, 2)
    logits = torch.einsum("bhgd,bhnd->bhgn", qg, k_all)
    if corr is not None:
        logits[..., : corr.shape[-1]] += corr
    logits = logits * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    first = torch.as_tensor(start, device=logits.device).reshape(-1, 1, 1, 1)  # [B or 1, 1, 1, 1]
    hidden = torch.arange(logits.shape[-1], device=logits.device) < first
    logits = logits.masked_fill(hidden, float("-inf"))
    attn = torch.softmax(logits, dim=-1)
    out = torch.einsum("bhgn,bhnd->bhgd", attn, v_all)
    return out.reshape(b, hq, 1, d).to(q.dtype)
