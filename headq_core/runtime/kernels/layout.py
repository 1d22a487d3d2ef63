"""The storage layout the kernels read and write: :class:`EncodedKV` (see docs/contracts.md).

One layer's quantized tokens: keys per_channel (groups of ``key_group`` tokens), values per_token
(groups of ``value_group`` channels), both bit-packed along head_dim, plus the optional HeadQ side
code. Shapes are validated once here so the kernels can trust them. :func:`from_packed` builds one
from the cache's own parts (``quant.Packed`` keys / values and a ``headq.SideCode``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from headq_core.method.headq import SideCode
from headq_core.method.packing import packed_size
from headq_core.method.quant import Packed, dequantize

KERNEL_BITS = (1, 2, 4, 8)  # widths whose codes never straddle a byte: the Triton paths


def _pow2(x: int) -> bool:
    return x >= 1 and x & (x - 1) == 0


def head_dim_covered(head_dim: int) -> bool:
    """The kernels' tiles span a power-of-two head_dim of at least 16."""
    return _pow2(head_dim) and head_dim >= 16


def decode_covers(head_dim: int, key_bits: int, key_group: int, value_bits: int, value_group: int) -> bool:
    """Whether the Triton decode kernel reads this packed layout: bits in ``KERNEL_BITS``,
    power-of-two head_dim >= 16 and groups, code rows of whole 32-bit words. The one rule that the
    kernels' dispatch and the cache's choice of path share."""
    return (head_dim_covered(head_dim) and key_bits in KERNEL_BITS and value_bits in KERNEL_BITS
            and _pow2(key_group) and _pow2(value_group)
            and head_dim * key_bits % 32 == 0 and head_dim * value_bits % 32 == 0)


def encode_covers(head_dim: int, key_bits: int, key_group: int, value_bits: int, value_group: int) -> bool:
    """Whether the Triton encode kernel writes this layout: as :func:`decode_covers` without the
    word rule, and key groups of at least 16 tokens."""
    return (head_dim_covered(head_dim) and key_bits in KERNEL_BITS and value_bits in KERNEL_BITS
            and _pow2(key_group) and key_group >= 16 and _pow2(value_group))


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{field_name}: {message}")


@dataclass(frozen=True)
class EncodedKV:
    """Quantized keys/values of ``N`` tokens of one layer, ``[B, Hkv, N, ...]`` (docs/contracts.md).

    ``k_codes`` uint8 ``[B, Hkv, N, d*kb/8]``; ``k_scale``/``k_zero`` fp16 ``[B, Hkv, N/Gk, d]``;
    ``v_codes`` uint8 ``[B, Hkv, N, d*vb/8]``; ``v_scale``/``v_zero`` fp16 ``[B, Hkv, N, d/Gv]``;
    ``side`` int8 ``[B, Hkv, N, r]`` / uint8 ``[..., r/2]`` (4 bits) / fp16 ``[..., r]`` (16 bits) or
    None; ``side_scale`` fp16 ``[B, Hkv, N]`` (None for 16-bit or absent side codes).
    """

    k_codes: torch.Tensor
    k_scale: torch.Tensor
    k_zero: torch.Tensor
    v_codes: torch.Tensor
    v_scale: torch.Tensor
    v_zero: torch.Tensor
    key_bits: int
    key_group: int
    value_bits: int
    value_group: int
    head_dim: int
    side: torch.Tensor | None = None
    side_scale: torch.Tensor | None = None
    side_bits: int = 8
    rank: int = 0

    def __post_init__(self) -> None:
        b, h, n, _ = self.k_codes.shape
        d = self.head_dim
        _require(n % self.key_group == 0, "k_codes", f"{n} tokens is not a whole number of key groups "
                 f"of {self.key_group}")
        _require(d % self.value_group == 0, "value_group", f"{self.value_group} does not divide head_dim {d}")
        expect: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
            "k_codes": ((b, h, n, packed_size(d, self.key_bits)), torch.uint8),
            "k_scale": ((b, h, n // self.key_group, d), torch.float16),
            "k_zero": ((b, h, n // self.key_group, d), torch.float16),
            "v_codes": ((b, h, n, packed_size(d, self.value_bits)), torch.uint8),
            "v_scale": ((b, h, n, d // self.value_group), torch.float16),
            "v_zero": ((b, h, n, d // self.value_group), torch.float16),
        }
        if self.side is not None:
            _require(self.side_bits in (4, 8, 16), "side_bits", f"must be 4, 8 or 16, got {self.side_bits!r}")
            side_dtype = {4: torch.uint8, 8: torch.int8, 16: torch.float16}[self.side_bits]
            width = packed_size(self.rank, 4) if self.side_bits == 4 else self.rank
            expect["side"] = ((b, h, n, width), side_dtype)
            if self.side_bits != 16:
                expect["side_scale"] = ((b, h, n), torch.float16)
        for name, (shape, dtype) in expect.items():
            t = getattr(self, name)
            _require(t is not None and tuple(t.shape) == shape and t.dtype == dtype, name,
                     f"expected {dtype} {list(shape)}, got "
                     f"{None if t is None else (t.dtype, list(t.shape))}")

    @property
    def tokens(self) -> int:
        return self.k_codes.shape[2]

    def to(self, device: torch.device | str) -> EncodedKV:
        """The same encoding with every tensor on ``device``."""
        names = ("k_codes", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero", "side", "side_scale")
        moved = {n: getattr(self, n).to(device) for n in names if getattr(self, n) is not None}
        return replace(self, **moved)

    def nbytes(self) -> int:
        """Bytes held by every tensor of this encoding."""
        parts = [self.k_codes, self.k_scale, self.k_zero, self.v_codes, self.v_scale, self.v_zero,
                 self.side, self.side_scale]
        return sum(t.numel() * t.element_size() for t in parts if t is not None)


def from_packed(keys: Packed, values: Packed, side: SideCode | None = None
                ) -> tuple[EncodedKV, torch.Tensor, torch.Tensor]:
    """(enc, k_res, v_res) for :func:`headq_core.runtime.kernels.decode_attention` from a cache's parts:
    keys per_channel and values per_token ``Packed`` of the same sequence [B, Hkv, seq, d] and the
    keys' side code. Values are quantized token by token, so up to a key group more of them than of
    the keys may be packed: those rows are dequantized into the front of ``v_res`` (the same numbers
    the reference reads), after which keys and values share one quantized length ``N``."""
    n, d = keys.n_quant, keys.shape[-1]
    if keys.axis != "per_channel" or values.axis != "per_token":
        raise ValueError("keys: needs per_channel keys and per_token values")
    if values.n_quant < n or tuple(values.shape) != tuple(keys.shape):
        raise ValueError(f"values: needs the keys' sequence {list(keys.shape)} with >= {n} quantized "
                         "tokens")
    extra = replace(values, codes=values.codes[..., n:, :], scale=values.scale[..., n:, :],
                    zero=values.zero[..., n:, :], shape=(*values.shape[:-2], values.n_quant - n, d),
                    tail=values.tail[..., :0, :])
    v_extra = dequantize(extra)  # only the rows the keys have not reached yet
    enc = EncodedKV(k_codes=keys.codes, k_scale=keys.scale, k_zero=keys.zero,
                    v_codes=values.codes[..., :n, :],
                    v_scale=values.scale[..., :n, :], v_zero=values.zero[..., :n, :], key_bits=keys.bits,
                    key_group=keys.group_size, value_bits=values.bits, value_group=values.group_size,
                    head_dim=d, side=None if side is None else side.codes,
                    side_scale=None if side is None else side.scale,
                    side_bits=8 if side is None else side.bits, rank=0 if side is None else side.rank)
    return enc, keys.tail, torch.cat([v_extra, values.tail], dim=-2)
