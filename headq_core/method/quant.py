"""Asymmetric uniform quantization of keys and values with bit-packed codes.

``per_channel``: each group of ``group_size`` consecutive tokens shares one fp16 scale and zero
per channel (the KIVI key layout). ``per_token``: each token's head_dim is cut into groups of
``group_size`` channels with one fp16 scale and zero each (the value layout). Numerics follow
docs/contracts.md: scale and zero are rounded to fp16 first, codes are computed against the fp16
values, and ``code * scale + zero`` in float32 is the reconstruction. Codes are stored as a uint8
bitstream along head_dim (:mod:`headq_core.method.packing`).

:func:`quantize` quantizes the leading :func:`~headq_core.method.schedule.quantized_count` tokens (the
cache state after ``seq`` tokens) and keeps the rest, the full-precision residual window plus any
incomplete group, in ``Packed.tail``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headq_core.config import QuantConfig
from headq_core.method.packing import pack_bits, unpack_bits
from headq_core.method.schedule import quantized_count

FP16_MAX = 65504.0


@dataclass
class Packed:
    """Quantized tensor. codes: uint8 [..., n_quant, ceil(d*bits/8)]; scale, zero: fp16
    [..., n_quant/G, d] (per_channel) or [..., n_quant, d/G] (per_token); tail: [..., seq-n_quant, d]
    in the input dtype; shape: the original [..., seq, d]."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    axis: str
    group_size: int
    shape: tuple[int, ...]
    tail: torch.Tensor
    dtype: torch.dtype

    @property
    def n_quant(self) -> int:
        return self.codes.shape[-2]


def check_finite(x: torch.Tensor, name: str = "x") -> None:
    """Raise ValueError naming ``name`` when ``x`` holds NaN or inf."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf")


def _grouped(x: torch.Tensor, cfg: QuantConfig) -> torch.Tensor:
    """[..., n, d] -> view with the group on dim -2: per_channel [..., n/G, G, d];
    per_token [..., n, d/G, G] transposed to [..., n, G, d/G]."""
    *lead, n, d = x.shape
    g = cfg.group_size
    if cfg.axis == "per_channel":
        return x.reshape(*lead, n // g, g, d)
    return x.reshape(*lead, n, d // g, g).transpose(-1, -2)


def _ungrouped(xg: torch.Tensor, cfg: QuantConfig, n: int, d: int) -> torch.Tensor:
    """Inverse of :func:`_grouped`."""
    lead = xg.shape[:-3]
    if cfg.axis == "per_channel":
        return xg.reshape(*lead, n, d)
    return xg.transpose(-1, -2).reshape(*lead, n, d)


def _validate(x: torch.Tensor, cfg: QuantConfig, n_quant: int) -> None:
    if x.dim() < 2:
        raise ValueError(f"x: needs shape [..., seq, head_dim], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x: must be a floating tensor, got {x.dtype}")
    check_finite(x)
    seq, d = x.shape[-2:]
    if cfg.axis == "per_token" and d % cfg.group_size:
        raise ValueError(f"group_size: {cfg.group_size} must divide head_dim {d} for per_token")
    if not 0 <= n_quant <= seq:
        raise ValueError(f"n_quant: must lie in [0, {seq}], got {n_quant}")
    if n_quant % cfg.seq_group:
        raise ValueError(f"group_size: {cfg.group_size} must divide the {n_quant} quantized tokens "
                         "for per_channel")


def quantize(x: torch.Tensor, cfg: QuantConfig, n_quant: int | None = None) -> Packed:
    """Quantize x [..., seq, d]: the first ``n_quant`` tokens (default: the decode rule's
    ``quantized_count(seq, cfg)``) become packed codes, the rest stay in ``tail``."""
    seq = x.shape[-2] if x.dim() >= 2 else 0
    n_quant = quantized_count(seq, cfg) if n_quant is None else n_quant
    _validate(x, cfg, n_quant)
    d = x.shape[-1]
    head = x[..., :n_quant, :].float()
    levels = (1 << cfg.bits) - 1
    xg = _grouped(head, cfg)
    lo, hi = xg.amin(-2, keepdim=True), xg.amax(-2, keepdim=True)
    if n_quant and (lo.abs().max() > FP16_MAX or hi.abs().max() > FP16_MAX):
        raise ValueError("x: values exceed the fp16 range of the scale / zero-point")
    scale = ((hi - lo) / levels).half()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = lo.half()
    codes = torch.round((xg - zero.float()) / scale.float()).clamp_(0, levels).to(torch.uint8)
    codes = _ungrouped(codes, cfg, n_quant, d)
    return Packed(codes=pack_bits(codes, cfg.bits), scale=scale.squeeze(-2), zero=zero.squeeze(-2),
                  bits=cfg.bits, axis=cfg.axis, group_size=cfg.group_size, shape=tuple(x.shape),
                  tail=x[..., n_quant:, :].clone(), dtype=x.dtype)


def dequantize(p: Packed) -> torch.Tensor:
    """Reconstruct [..., seq, d] in the input dtype: float32 ``code * scale + zero``, then the tail."""
    d = p.shape[-1]
    n = p.n_quant
    cfg = QuantConfig(bits=p.bits, axis=p.axis, group_size=p.group_size)  # type: ignore[arg-type]
    codes = _grouped(unpack_bits(p.codes, p.bits, d).float(), cfg)
    head = _ungrouped(codes * p.scale.float().unsqueeze(-2) + p.zero.float().unsqueeze(-2), cfg, n, d)
    return torch.cat([head.to(p.dtype), p.tail], dim=-2)


def fake_quantize(x: torch.Tensor, cfg: QuantConfig | None, n_quant: int | None = None) -> torch.Tensor:
    """``dequantize(quantize(x, cfg, n_quant))``; ``x`` itself when ``cfg`` is None."""
    if cfg is None:
        check_finite(x)
        return x
    return dequantize(quantize(x, cfg, n_quant))
