"""Uniform quantization of keys and values with bit-packed codes, and the entry point of every format.

``per_channel``: each group of ``group_size`` consecutive tokens shares one fp16 scale and zero
per channel (the KIVI key layout). ``per_token``: each token's head_dim is cut into groups of
``group_size`` channels with one fp16 scale and zero each (the value layout). Numerics follow
docs/contracts.md: scale and zero are rounded to fp16 first, codes are computed against the fp16
values, and ``code * scale + zero`` in float32 is the reconstruction. Codes are stored as a uint8
bitstream along head_dim (:mod:`headq_core.method.packing`). ``symmetric``: the scale is
``amax / (2^(bits-1) - 1)``, codes ``round(x / scale)`` in ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]``
stored offset by ``2^(bits-1)``; the zero-point ``-2^(bits-1) * scale`` is exact in fp16, so the same
``Packed`` holds them (the budget counts the scale only).

:func:`fake_quantize` is what the evaluator calls for keys and values: every format of
:mod:`headq_core.method.formats` (fp8, llama.cpp blocks) and, with ``rotation="hadamard"``,
``Hᵀ Q(H x)`` (:mod:`headq_core.method.rotation`), the ``int`` format's dense-and-sparse
outliers (:mod:`headq_core.method.outliers`) and non-uniform codebooks (``codebook="nuq"``,
:mod:`headq_core.method.codebook`); pre-RoPE keys go through
:func:`headq_core.method.pre_rope.fake_quantize_keys`, which calls it between its rotations.

:func:`quantize` quantizes the leading :func:`~headq_core.method.schedule.quantized_count` tokens (the
cache state after ``seq`` tokens) and keeps the rest, the full-precision residual window plus any
incomplete group, in ``Packed.tail``. Its checks raise ValueError at once; given a ``flags`` tensor
(a decode step of the cache, docs/adr/0006) each sets its bit there (:class:`Flag`) instead, so the
host never waits for the device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from headq_core.config import QuantConfig
from headq_core.method.codebook import read_nuq
from headq_core.method.formats import FP16_MAX, check_head_dim, fake_quantize_engine
from headq_core.method.groups import grouped, ungrouped
from headq_core.method.outliers import read_with_outliers
from headq_core.method.packing import pack_bits, unpack_bits
from headq_core.method.rotation import hadamard_matrix, rotate, unrotate
from headq_core.method.schedule import quantized_count


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


@dataclass(frozen=True)
class Flag:
    """A check on device data: raises ``message`` on the host, or sets ``bit`` of a flags tensor
    (int32 [], on the data's device) without a host sync; ``runtime.step_flags`` raises it later."""

    bit: int
    message: str

    def check(self, bad: torch.Tensor, flags: torch.Tensor | None) -> None:
        """Raise (``flags`` None) or record where ``bad`` (bool []) holds."""
        if flags is None:
            if bad:
                raise ValueError(self.message)
        else:
            flags.bitwise_or_(bad.to(flags.dtype) * self.bit)


X_NON_FINITE = Flag(1, "x: contains NaN or inf")
X_FP16_RANGE = Flag(2, "x: values exceed the fp16 range of the scale / zero-point")


def _validate(x: torch.Tensor, cfg: QuantConfig, n_quant: int, flags: torch.Tensor | None = None) -> None:
    if x.dim() < 2:
        raise ValueError(f"x: needs shape [..., seq, head_dim], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x: must be a floating tensor, got {x.dtype}")
    X_NON_FINITE.check(~torch.isfinite(x).all(), flags)
    seq, d = x.shape[-2:]
    check_head_dim(cfg, d)
    if not 0 <= n_quant <= seq:
        raise ValueError(f"n_quant: must lie in [0, {seq}], got {n_quant}")
    if n_quant % cfg.seq_group:
        raise ValueError(f"group_size: {cfg.group_size} must divide the {n_quant} quantized tokens "
                         "for per_channel")


def _asymmetric_codes(xg: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                      bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale, zero) fp16 and uint8 codes of grouped values (group on dim -2; lo, hi its extremes)."""
    levels = (1 << bits) - 1
    scale = ((hi - lo) / levels).half()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = lo.half()
    codes = torch.round((xg - zero.float()) / scale.float()).clamp_(0, levels).to(torch.uint8)
    return scale, zero, codes


def _symmetric_codes(xg: torch.Tensor, bits: int,
                     flags: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric: fp16 scale ``amax / (2^(b-1) - 1)``; codes + ``2^(b-1)``; zero ``-2^(b-1) scale``."""
    offset = 1 << (bits - 1)
    qmax = offset - 1
    scale = (xg.abs().amax(-2, keepdim=True) / qmax).half()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = (scale.float() * -offset).half()  # a power of two times an fp16 number: exact unless it overflows
    X_FP16_RANGE.check(~torch.isfinite(zero).all(), flags)
    codes = torch.round(xg / scale.float()).clamp_(-qmax, qmax) + offset
    return scale, zero, codes.to(torch.uint8)


def quantize(x: torch.Tensor, cfg: QuantConfig, n_quant: int | None = None,
             flags: torch.Tensor | None = None) -> Packed:
    """Quantize x [..., seq, d]: the first ``n_quant`` tokens (default: the decode rule's
    ``quantized_count(seq, cfg)``) become packed codes, the rest stay in ``tail``. Non-finite values
    and scales / zero-points beyond fp16 raise ValueError, or with ``flags`` (int32 [] on x's device)
    set their bits there (no host sync)."""
    seq = x.shape[-2] if x.dim() >= 2 else 0
    n_quant = quantized_count(seq, cfg) if n_quant is None else n_quant
    if (cfg.format != "int" or cfg.rotation != "none" or cfg.outliers or cfg.pre_rope
            or cfg.codebook != "uniform"):
        name = ("format" if cfg.format != "int" else "rotation" if cfg.rotation != "none"
                else "outliers" if cfg.outliers else "pre_rope" if cfg.pre_rope else "codebook")
        raise ValueError(f"{name}: packed codes hold the 'int' format without a rotation, outliers, "
                         f"pre-RoPE or codebook, got {getattr(cfg, name)!r} (fake_quantize reads every "
                         "format)")
    _validate(x, cfg, n_quant, flags)
    d = x.shape[-1]
    head = x[..., :n_quant, :].float()
    xg = grouped(head, cfg)
    lo, hi = xg.amin(-2, keepdim=True), xg.amax(-2, keepdim=True)
    if n_quant:
        X_FP16_RANGE.check((lo.abs().max() > FP16_MAX) | (hi.abs().max() > FP16_MAX), flags)
    if cfg.symmetric:
        scale, zero, codes = _symmetric_codes(xg, cfg.bits, flags)
    else:
        scale, zero, codes = _asymmetric_codes(xg, lo, hi, cfg.bits)
    codes = ungrouped(codes, cfg, n_quant, d)
    packed = pack_bits(codes, cfg.bits, check=flags is None)  # codes are clamped: its check only syncs
    return Packed(codes=packed, scale=scale.squeeze(-2), zero=zero.squeeze(-2),
                  bits=cfg.bits, axis=cfg.axis, group_size=cfg.group_size, shape=tuple(x.shape),
                  tail=x[..., n_quant:, :].clone(), dtype=x.dtype)


def dequantize(p: Packed) -> torch.Tensor:
    """Reconstruct [..., seq, d] in the input dtype: float32 ``code * scale + zero``, then the tail."""
    d = p.shape[-1]
    n = p.n_quant
    cfg = QuantConfig(bits=p.bits, axis=p.axis, group_size=p.group_size)  # type: ignore[arg-type]
    codes = grouped(unpack_bits(p.codes, p.bits, d).float(), cfg)
    head = ungrouped(codes * p.scale.float().unsqueeze(-2) + p.zero.float().unsqueeze(-2), cfg, n, d)
    return torch.cat([head.to(p.dtype), p.tail], dim=-2)


def fake_quantize(x: torch.Tensor, cfg: QuantConfig | None, n_quant: int | None = None, *,
                  amax: torch.Tensor | None = None, codebook: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., seq, d] as read back from the cache ``cfg`` describes, in x's dtype: the first
    ``n_quant`` tokens (default: the decode rule's) through the format, the rest exact. ``int``
    without a rotation or outliers is ``dequantize(quantize(x, cfg, n_quant))``; ``x`` itself when
    ``cfg`` is None. ``amax`` float32 [kv_heads] (x [..., kv_heads, seq, d]): the calibration's amax of
    x's layer, which static fp8 scales (``cfg.fp8_static``) need and nothing else takes; ``codebook``
    float32 [2^bits]: the calibration's levels of x's layer and side, which ``codebook="nuq"`` needs
    (both as ``Calibration.layer_static`` gives them)."""
    if cfg is None:
        check_finite(x)
        return x
    if cfg.pre_rope:
        raise ValueError("key.pre_rope: needs the keys' rotary cos / sin (pre_rope.fake_quantize_keys)")
    if amax is not None and not cfg.fp8_static:
        raise ValueError("amax: only static fp8 scales (fp8_static) read it")
    if (codebook is not None) != (cfg.codebook == "nuq"):
        raise ValueError("codebook: only codebook 'nuq' reads a calibration's levels" if codebook is not None
                         else "calibration: codebook 'nuq' needs the calibration's levels (layer_static)")
    if cfg.format == "int" and cfg.rotation == "none" and not cfg.outliers and codebook is None:
        return dequantize(quantize(x, cfg, n_quant))
    seq = x.shape[-2] if x.dim() >= 2 else 0
    n_quant = quantized_count(seq, cfg) if n_quant is None else n_quant
    _validate(x, cfg, n_quant)
    head = x[..., :n_quant, :].float()
    if cfg.rotation == "hadamard":
        h = hadamard_matrix(x.shape[-1], cfg.rotation_seed)
        head = unrotate(_read_rows(rotate(head, h), cfg, codebook=codebook), h)
    else:
        head = _read_rows(head, cfg, amax, codebook)
    return torch.cat([head.to(x.dtype), x[..., n_quant:, :]], dim=-2)


def _read_rows(rows: torch.Tensor, cfg: QuantConfig, amax: torch.Tensor | None = None,
               codebook: torch.Tensor | None = None) -> torch.Tensor:
    """Every row of rows float32 [..., n, d] through ``cfg``'s format (no rotation; ``int``: its
    outliers by ``method.outliers``, ``nuq`` codes with ``codebook``) -> float32."""
    if cfg.format != "int":
        return fake_quantize_engine(rows, cfg, amax)
    dense = replace(cfg, rotation="none", rotation_seed=0, outliers=0.0, codebook="uniform")

    def read(r: torch.Tensor) -> torch.Tensor:
        if codebook is not None:
            return read_nuq(r, dense, codebook)
        return dequantize(quantize(r, dense, n_quant=r.shape[-2]))

    return read_with_outliers(rows, cfg, read) if cfg.outliers else read(rows)
