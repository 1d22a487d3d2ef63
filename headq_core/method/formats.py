"""The engine cache formats behind one interface: which class stores a :class:`QuantConfig`, what a
token reads back from it, and how many bits it stores per element.

``int`` is the project's own uniform quantizer (:mod:`headq_core.method.quant`, asymmetric or
symmetric); ``fp8_e4m3`` / ``fp8_e5m2`` are :class:`~headq_core.method.fp8.Fp8Format`; the llama.cpp
blocks are :class:`~headq_core.method.ggml_blocks.BlockFormat` and
:class:`~headq_core.method.iq4_nl.Iq4NlFormat`. Every format goes through ``quant.fake_quantize``
(the evaluator's entry point) and :func:`row_bits` (the budget's).
"""

from __future__ import annotations

import torch

from headq_core.config import QuantConfig
from headq_core.method.fp8 import Fp8Format
from headq_core.method.ggml_blocks import BLOCK, BLOCK_FORMATS, BlockFormat
from headq_core.method.iq4_nl import Iq4NlFormat
from headq_core.method.outliers import outlier_bits
from headq_core.method.packing import packed_size

FP16_BITS = 16.0
FP16_MAX = 65504.0
EngineFormat = Fp8Format | BlockFormat | Iq4NlFormat


def engine_format(cfg: QuantConfig) -> EngineFormat:
    """The class that stores ``cfg.format`` (not for ``int``)."""
    if cfg.format.startswith("fp8"):
        return Fp8Format(cfg.format, cfg.fp8_scale, cfg.fp8_static)
    if cfg.format == "iq4_nl":
        return Iq4NlFormat()
    if cfg.format in BLOCK_FORMATS:
        return BLOCK_FORMATS[cfg.format]
    raise ValueError(f"format: {cfg.format!r} is not an engine format")


def check_head_dim(cfg: QuantConfig, head_dim: int) -> None:
    """Raise ValueError naming the field when ``cfg`` cannot store rows of ``head_dim``."""
    if cfg.format == "int" and cfg.axis == "per_token" and head_dim % cfg.group_size:
        raise ValueError(f"group_size: {cfg.group_size} must divide head_dim {head_dim} for per_token")
    if cfg.format in (*BLOCK_FORMATS, "iq4_nl") and head_dim % BLOCK:
        raise ValueError(f"format: {cfg.format!r} needs a head_dim divisible by {BLOCK}, got {head_dim}")
    if cfg.rotation == "hadamard" and (head_dim < 1 or head_dim & (head_dim - 1)):
        raise ValueError(f"rotation: a Hadamard rotation needs a power-of-two head_dim, got {head_dim}")


def row_bits(cfg: QuantConfig, head_dim: int, bits: int | None = None) -> float:
    """Stored bits per element of one quantized row of ``head_dim`` (codes, scales, zero-points).

    ``int``: the packed code width ``ceil(d*bits/8)*8/d`` plus an fp16 scale (and, asymmetric, an
    fp16 zero-point) per group of ``group_size`` elements; ``bits`` overrides the code width (16:
    a plain fp16 row), plus with ``outliers`` an fp16 value and a 16-bit index per outlier
    (``outliers.outlier_bits``). Engine formats: their own layout (fp8 8 or 8 + 32/d, q4_0 4.5, q8_0
    8.5, ...). A rotation adds nothing (it is fixed by its seed), nor does ``pre_rope`` (fixed by the
    position)."""
    check_head_dim(cfg, head_dim)
    if cfg.format != "int":
        return engine_format(cfg).row_bits(head_dim)
    width = cfg.bits if bits is None else bits
    if width == 16:
        return FP16_BITS
    per_group = FP16_BITS if cfg.symmetric else 2 * FP16_BITS
    codes = packed_size(head_dim, width) * 8 / head_dim + per_group / cfg.group_size
    return codes + outlier_bits(cfg, head_dim)


def fake_quantize_engine(x: torch.Tensor, cfg: QuantConfig, amax: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., n, d] (every row quantized) -> float32 [..., n, d] as read back from ``cfg.format``;
    ``amax`` float32 [kv_heads]: the calibration's, for static fp8 scales only."""
    fmt = engine_format(cfg)
    x = x.float()
    if isinstance(fmt, Fp8Format):
        return fmt.fake_quantize(x, amax)
    if amax is not None:
        raise ValueError("amax: only static fp8 scales (fp8_static) read it")
    check_head_dim(cfg, x.shape[-1])
    if x.numel() and x.abs().max() > FP16_MAX:
        raise ValueError("x: values exceed the fp16 range of the block scale / minimum")
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // BLOCK, BLOCK)
    return fmt.decode(fmt.encode(blocks)).reshape(x.shape)
