"""The dequantizing side of the cache, for the formats its packed codes do not hold: the engine
formats (fp8, llama.cpp blocks), symmetric codes and rotations (``QuantConfig.is_plain`` false).

Tokens leave the residual window as :class:`~headq_core.runtime.sides.Side` moves them, quantized
by ``quant.fake_quantize`` (the evaluator's own function) and held as what attention reads, float32
[B, H, n, d]; with HeadQ the side code of the residual as for packed sides. So a decode loop reads
exactly what the evaluator scores; the memory held is not the format's (the kernel path never reads
this side): :meth:`FormatSide.nbytes` counts what the format stores per row (``formats.row_bits``),
which is what a serving engine would hold. Static fp8 scales read the layer's calibration ``amax``
as the evaluator does.
"""

from __future__ import annotations

import torch

from headq_core.config import HeadQConfig, QuantConfig
from headq_core.method.formats import row_bits
from headq_core.method.headq import encode_side
from headq_core.method.quant import fake_quantize
from headq_core.method.schedule import quantized_count
from headq_core.runtime.sides import Side, cat_side


class FormatSide(Side):
    """One side in a format only the evaluator's ``fake_quantize`` reads (module docstring);
    ``amax`` float32 [H]: the layer's calibration amax of this side, for static fp8 scales only."""

    def __init__(self, cfg: QuantConfig, amax: torch.Tensor | None = None) -> None:
        super().__init__(cfg)
        if cfg.fp8_static and amax is None:
            raise ValueError("calibration: static fp8 scales (fp8_static) need the calibration's amax")
        self.amax = amax
        self.head: torch.Tensor | None = None  # quantized tokens as read, float32 [B, H, n, d]

    @property
    def n_quant(self) -> int:
        return 0 if self.head is None else self.head.shape[-2]

    def _drop_head(self, count: int) -> None:
        assert self.head is not None
        self.head = self.head[..., count:, :].clone()  # a fresh tensor: the freed memory goes back

    def append(self, x: torch.Tensor, basis: torch.Tensor | None, headq: HeadQConfig | None) -> None:
        """Add tokens x [B, H, s, d]; quantize those the decode rule now wants quantized."""
        assert self.cfg is not None
        self.tail = x if self.tail is None else torch.cat([self.tail, x], dim=-2)
        move = quantized_count(self.total, self.cfg) - self.first - self.n_quant
        if move <= 0:
            return
        leaving, self.tail = self.tail[..., :move, :].float(), self.tail[..., move:, :]
        read = fake_quantize(leaving, self.cfg, n_quant=move, amax=self.amax)
        if basis is not None and headq is not None:
            side = encode_side(leaving - read, basis.to(leaving.device), headq.side_bits,
                               scale=headq.side_scale, group_size=self.cfg.group_size)
            self.side = side if self.side is None else cat_side(self.side, side)
        self.head = read if self.head is None else torch.cat([self.head, read], dim=-2)

    def _head(self) -> torch.Tensor | None:
        return self.head

    def nbytes(self) -> int:
        """Bytes the format stores for the quantized tokens (``row_bits`` per element), plus the side
        codes and the full-precision tail actually held."""
        tensors = [] if self.tail is None else [self.tail]
        if self.side is not None:
            tensors += [self.side.codes] + ([] if self.side.scale is None else [self.side.scale])
        held = sum(t.numel() * t.element_size() for t in tensors)
        if self.head is None or self.cfg is None:
            return held
        return held + int(self.head.numel() * row_bits(self.cfg, self.head.shape[-1]) / 8)
