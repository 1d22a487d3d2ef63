"""Pre-RoPE keys (KVQuant): quantize each key before the rotary embedding, rotate it back at read time.

A model's cache holds post-RoPE keys ``k_j = RoPE_j(p_j)``. transformers' rotary embedding (the
full-width ``rotate_half`` layout) is ``RoPE(p) = p * cos + rotate_half(p) * sin`` with
``cos, sin`` of the position, the same for both halves of head_dim; on each pair of channels
``(i, i + d/2)`` it is the 2x2 matrix ``[[c, -s], [s, c]]``, whose inverse is
``[[c, s], [-s, c]] / (c² + s²)``: :func:`unrotate` is ``(k * cos - rotate_half(k) * sin) /
(cos² + sin²)`` (``c² + s² = 1`` unless the rope type scales both, as YaRN's attention factor does).
A pre-RoPE key format reads ``k^_j = RoPE_j(Q(RoPE_j⁻¹(k_j)))``: the per-channel groups of ``Q`` see
the channels before the rotation mixes them with the position, which keeps their outlier channels
in place (KVQuant). The rotation is fixed by the position: it costs no stored bits.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from headq_core.config import QuantConfig
from headq_core.method.quant import fake_quantize
from headq_core.method.schedule import quantized_count

Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin) [batch, seq, head_dim], as the model passes them


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[-x2, x1]`` of the halves ``x1, x2`` of x [..., d] (transformers' ``rotate_half``)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def _factors(rope: Rope, x: torch.Tensor) -> Rope:
    """cos, sin [batch, seq, d] -> [batch, 1, seq, d] float32 on x's device (one per head of x
    [batch, heads, seq, d]); a rotary width other than x's head_dim is refused."""
    cos, sin = rope
    fits = x.dim() == 4 and cos.shape == sin.shape and cos.shape[-2:] == x.shape[-2:]
    if not fits or cos.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"key.pre_rope: cos / sin {tuple(cos.shape)} / {tuple(sin.shape)} do not cover keys "
                         f"{tuple(x.shape)} (a full-width rotary embedding, one per token)")
    return cos.float().unsqueeze(1).to(x.device), sin.float().unsqueeze(1).to(x.device)


def rotate(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """``RoPE(x)`` for x [batch, heads, seq, d] at the positions of ``rope`` -> float32."""
    cos, sin = _factors(rope, x)
    x = x.float()
    return x * cos + rotate_half(x) * sin


def unrotate(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """``RoPE⁻¹(x)`` for post-RoPE x [batch, heads, seq, d] -> float32 (the pre-RoPE keys)."""
    cos, sin = _factors(rope, x)
    x = x.float()
    return (x * cos - rotate_half(x) * sin) / (cos * cos + sin * sin)


def fake_quantize_keys(k: torch.Tensor, cfg: QuantConfig | None, rope: Rope | None,
                       n_quant: int | None = None, *, amax: torch.Tensor | None = None,
                       codebook: torch.Tensor | None = None) -> torch.Tensor:
    """Post-RoPE keys k [batch, heads, seq, d] as read back from the key cache ``cfg``, in k's dtype:
    the first ``n_quant`` tokens (default: the decode rule's) quantized, the rest exact. With
    ``cfg.pre_rope`` those tokens are un-rotated with ``rope`` (cos, sin [batch, seq, d] of k's
    positions), quantized as ``cfg`` says otherwise, and rotated back; else ``quant.fake_quantize``
    (``amax``: a calibration's, for static fp8 scales, which the spec refuses with ``pre_rope``;
    ``codebook``: a calibration's ``nuq`` levels [2^bits], learned on post-RoPE keys, so also refused
    with ``pre_rope``)."""
    if cfg is None or not cfg.pre_rope:
        return fake_quantize(k, cfg, n_quant, amax=amax, codebook=codebook)
    if rope is None:
        raise ValueError("key.pre_rope: needs the rotary cos / sin of the keys' positions")
    _factors(rope, k)  # refuses a rope that does not match k
    n = quantized_count(k.shape[-2], cfg) if n_quant is None else n_quant
    head_rope = (rope[0][..., :n, :], rope[1][..., :n, :])
    head = unrotate(k[..., :n, :], head_rope)
    read = rotate(fake_quantize(head, replace(cfg, pre_rope=False), n_quant=n), head_rope)
    return torch.cat([read.to(k.dtype), k[..., n:, :]], dim=-2)
