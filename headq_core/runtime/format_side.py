"""The dequantizing side of the cache, for the formats its packed codes do not hold: the engine
formats (fp8, llama.cpp blocks), symmetric codes and rotations (``QuantConfig.is_plain`` false).

Tokens leave the residual window as :class:`~headq_core.runtime.sides.Side` moves them, quantized
by ``quant.fake_quantize`` (the evaluator's own function) and held as what attention reads, float32
[B, H, n, d]; with HeadQ the side code of the residual as for packed sides. So a decode loop reads
exactly what the evaluator scores; the memory held is not the format's (the kernel path never reads
this side): :meth:`FormatSide.nbytes` counts what the format stores per row (``formats.row_bits``),
which is what a serving engine would hold. Static fp8 scales read the layer's calibration ``amax``,
``nuq`` codes its codebook, as the evaluator does (``Calibration.layer_static``).

Pre-RoPE keys (``QuantConfig.pre_rope``) also keep the rotary cos / sin of their tail tokens, given
with each :meth:`FormatSide.append`: a token leaving the window is un-rotated by its position,
quantized and rotated back (``pre_rope.fake_quantize_keys``, the evaluator's). A serving engine
would recompute them from the positions, so :meth:`FormatSide.nbytes` does not count them.
"""

from __future__ import annotations

import torch

from headq_core.config import HeadQConfig, QuantConfig
from headq_core.method.formats import row_bits
from headq_core.method.headq import encode_side
from headq_core.method.pre_rope import Rope, fake_quantize_keys
from headq_core.method.schedule import quantized_count
from headq_core.runtime.sides import Side, cat_side


class FormatSide(Side):
    """One side in a format only the evaluator's ``fake_quantize`` reads (module docstring);
    ``static``: what the format reads from the layer's calibration, ``fake_quantize``'s keyword
    arguments (``amax`` float32 [H] for static fp8 scales, ``codebook`` [2^bits] for ``nuq``)."""

    def __init__(self, cfg: QuantConfig, static: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(cfg)
        self.static = dict(static or {})
        if cfg.fp8_static and "amax" not in self.static:
            raise ValueError("calibration: static fp8 scales (fp8_static) need the calibration's amax")
        if cfg.codebook == "nuq" and "codebook" not in self.static:
            raise ValueError("calibration: codebook 'nuq' needs the calibration's codebook")
        self.head: torch.Tensor | None = None  # quantized tokens as read, float32 [B, H, n, d]
        self.tail_rope: Rope | None = None  # pre-RoPE keys: cos, sin [B, n_tail, d] of the tail

    @property
    def n_quant(self) -> int:
        return 0 if self.head is None else self.head.shape[-2]

    def _drop_head(self, count: int) -> None:
        assert self.head is not None
        self.head = self.head[..., count:, :].clone()  # a fresh tensor: the freed memory goes back

    def append(self, x: torch.Tensor, basis: torch.Tensor | None, headq: HeadQConfig | None,
               rope: Rope | None = None) -> None:
        """Add tokens x [B, H, s, d] (pre-RoPE keys: with ``rope``, their cos, sin [B or 1, s, d]);
        quantize those the decode rule now wants quantized."""
        assert self.cfg is not None
        self.tail = x if self.tail is None else torch.cat([self.tail, x], dim=-2)
        if self.cfg.pre_rope:
            self._add_rope(rope, x)
        move = quantized_count(self.total, self.cfg) - self.first - self.n_quant
        if move <= 0:
            return
        leaving, self.tail = self.tail[..., :move, :].float(), self.tail[..., move:, :]
        leaving_rope = None
        if self.tail_rope is not None:
            cos, sin = self.tail_rope
            leaving_rope, self.tail_rope = (cos[:, :move], sin[:, :move]), (cos[:, move:], sin[:, move:])
        read = fake_quantize_keys(leaving, self.cfg, leaving_rope, n_quant=move, **self.static)
        if basis is not None and headq is not None:
            side = encode_side(leaving - read, basis.to(leaving.device), headq.side_bits,
                               scale=headq.side_scale, group_size=self.cfg.group_size)
            self.side = side if self.side is None else cat_side(self.side, side)
        self.head = read if self.head is None else torch.cat([self.head, read], dim=-2)

    def _add_rope(self, rope: Rope | None, x: torch.Tensor) -> None:
        """Keep the cos, sin [B or 1, s, d] of the new tokens x [B, H, s, d] with the tail's."""
        if rope is None or rope[0].shape[-2] != x.shape[-2]:
            raise ValueError("key.pre_rope: the cache needs the rotary cos / sin of every new key: run the "
                             "model inside `with cache.attached(model):`")
        cos, sin = (t.expand(x.shape[0], -1, -1) for t in rope)
        if self.tail_rope is not None:
            cos, sin = torch.cat([self.tail_rope[0], cos], -2), torch.cat([self.tail_rope[1], sin], -2)
        self.tail_rope = (cos, sin)

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
