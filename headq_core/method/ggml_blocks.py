"""llama.cpp's KV cache block formats q8_0, q4_0, q4_1, q5_0, q5_1 (iq4_nl: ``iq4_nl.py``).

Each token's head vector is cut into blocks of 32 values; a block stores an fp16 scale ``d`` (q4_1,
q5_1: and an fp16 minimum ``m``) and one code per value, following ggml's reference quantizers
(``quantize_row_*_ref`` in ggml-quants.c): the codes are computed in float32 against the unrounded
scale, then the scale is rounded to fp16; reading gives ``(q - offset) * d`` or ``q * d + m``.

=======  =====================================================  ==========================  =====
format   scale                                                  code                        bits
=======  =====================================================  ==========================  =====
q8_0     d = amax / 127                                         roundf(x / d), int8         8.5
q4_0     d = max / -8 (max: the value of largest magnitude)     min(15, trunc(x / d + 8.5))  4.5
q4_1     d = (max - min) / 15, m = min                          min(15, trunc((x-m)/d+0.5))  5.0
q5_0     d = max / -16                                          min(31, trunc(x / d + 16.5)) 5.5
q5_1     d = (max - min) / 31, m = min                          trunc((x - m) / d + 0.5)    6.0
=======  =====================================================  ==========================  =====

(``x / d`` is ``x * (1 / d)`` in float32, 0 where d = 0.) :meth:`BlockFormat.to_bytes` lays a block
out byte for byte as ggml stores it (``d``, ``m``, the 5th bits ``qh`` as a little-endian uint32,
then the low nibbles of values j and j + 16 in byte j), so a test can compare with ggml's own bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK = 32


@dataclass
class Blocks:
    """Encoded blocks: d (and m) fp16 [..., nb]; q codes [..., nb, 32] (int8 for q8_0, else uint8)."""

    d: torch.Tensor
    m: torch.Tensor | None
    q: torch.Tensor


def roundf(v: torch.Tensor) -> torch.Tensor:
    """C's ``roundf`` (halves away from zero) in float32, exact: ``sign(v) * (floor|v| + [frac >= .5])``."""
    a = v.abs()
    f = a.floor()
    return torch.sign(v) * (f + (2 * (a - f)).floor())


def inverse(d: torch.Tensor) -> torch.Tensor:
    """``d ? 1/d : 0`` in float32."""
    safe = torch.where(d == 0, torch.ones_like(d), d)
    return torch.where(d == 0, torch.zeros_like(d), 1 / safe)


def signed_max(x: torch.Tensor) -> torch.Tensor:
    """The value of largest magnitude of each block [..., nb, 32] -> [..., nb, 1] (first one on ties)."""
    return x.gather(-1, x.abs().argmax(-1, keepdim=True))


def fp16_bytes(t: torch.Tensor) -> torch.Tensor:
    """fp16 [..., nb] -> its little-endian bytes uint8 [..., nb, 2]."""
    return t.half().contiguous().unsqueeze(-1).view(torch.uint8)


def nibbles(q: torch.Tensor) -> torch.Tensor:
    """Codes [..., nb, 32] -> uint8 [..., nb, 16]: low nibble of value j, high nibble of value j + 16."""
    q = q.to(torch.uint8)
    return (q[..., :16] & 0x0F) | ((q[..., 16:] & 0x0F) << 4)


def high_bits(q: torch.Tensor) -> torch.Tensor:
    """The 5th bit of each code [..., nb, 32] as ggml's ``qh``: uint32 little-endian, uint8 [..., nb, 4]."""
    bit = ((q.to(torch.int64) >> 4) & 1).reshape(*q.shape[:-1], 4, 8)
    return (bit << torch.arange(8, device=q.device)).sum(-1).to(torch.uint8)


@dataclass(frozen=True)
class BlockFormat:
    """q8_0, q4_0, q4_1, q5_0 or q5_1: ``bits``-bit codes, with a minimum (``_1``) or centred (``_0``)."""

    name: str
    bits: int

    @property
    def has_min(self) -> bool:
        return self.name.endswith("_1")

    @property
    def type_size(self) -> int:
        """Bytes of one block of 32 values (ggml's ``sizeof(block_*)``)."""
        codes = BLOCK if self.bits == 8 else BLOCK // 2  # int8 codes, or two nibbles a byte
        return 2 + (2 if self.has_min else 0) + (4 if self.bits == 5 else 0) + codes

    def row_bits(self, head_dim: int) -> float:
        """Stored bits per element (q4_0 4.5, q4_1 5.0, q5_0 5.5, q5_1 6.0, q8_0 8.5)."""
        return self.type_size * 8 / BLOCK

    def encode(self, x: torch.Tensor) -> Blocks:
        """Blocks of x float32 [..., nb, 32]."""
        levels = (1 << self.bits) - 1
        if self.name == "q8_0":
            d = x.abs().amax(-1, keepdim=True) / 127
            q = roundf(x * inverse(d)).to(torch.int8)
            return Blocks(d.squeeze(-1).half(), None, q)
        if self.has_min:
            lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
            d = (hi - lo) / levels
            q = ((x - lo) * inverse(d) + 0.5).trunc().clamp(0, levels).to(torch.uint8)
            return Blocks(d.squeeze(-1).half(), lo.squeeze(-1).half(), q)
        half = 1 << (self.bits - 1)
        d = signed_max(x) / -half
        q = (x * inverse(d) + (half + 0.5)).trunc().clamp(0, levels).to(torch.uint8)
        return Blocks(d.squeeze(-1).half(), None, q)

    def decode(self, b: Blocks) -> torch.Tensor:
        """float32 [..., nb, 32]: ``q * d`` (q8_0), ``(q - 2^(bits-1)) * d`` or ``q * d + m``."""
        d = b.d.float().unsqueeze(-1)
        if self.name == "q8_0":
            return b.q.float() * d
        if b.m is not None:
            return b.q.float() * d + b.m.float().unsqueeze(-1)
        return (b.q.float() - (1 << (self.bits - 1))) * d

    def to_bytes(self, b: Blocks) -> torch.Tensor:
        """The blocks as ggml stores them, uint8 [..., nb, type_size]."""
        parts = [fp16_bytes(b.d)]
        if b.m is not None:
            parts.append(fp16_bytes(b.m))
        if self.name == "q8_0":
            parts.append(b.q.view(torch.uint8))
        else:
            if self.bits == 5:
                parts.append(high_bits(b.q))
            parts.append(nibbles(b.q))
        return torch.cat(parts, -1)


BLOCK_FORMATS = {f.name: f for f in (BlockFormat("q8_0", 8), BlockFormat("q4_0", 4), BlockFormat("q4_1", 4),
                                     BlockFormat("q5_0", 5), BlockFormat("q5_1", 5))}
