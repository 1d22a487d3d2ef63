"""Bit packing of quantization codes: a little-endian bitstream along the last dimension.

Code ``i`` of a row occupies bits ``[i*bits, (i+1)*bits)`` of the row's bitstream; bit ``b`` of the
stream is bit ``b % 8`` of byte ``b // 8``. A row of ``n`` codes takes ``ceil(n*bits/8)`` bytes
(the last byte is zero-padded). Widths that divide 8 (1, 2, 4, 8) use a shift-and-or fast path;
other widths (3, 5, 6, 7) go through an explicit bit expansion. Both give the same bytes.
"""

from __future__ import annotations

import torch


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits: must be an integer in 1..8, got {bits!r}")


def packed_size(n: int, bits: int) -> int:
    """Bytes needed for ``n`` codes of ``bits`` bits."""
    _check_bits(bits)
    return (n * bits + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int, check: bool = True) -> torch.Tensor:
    """Pack ``codes`` uint8 [..., n] (each < 2**bits) into uint8 [..., ceil(n*bits/8)].
    ``check=False`` skips the range check (a host sync) for codes clamped where they are made."""
    _check_bits(bits)
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes: must be torch.uint8, got {codes.dtype}")
    if check and codes.numel() and int(codes.max()) >= (1 << bits):
        raise ValueError(f"codes: values must be < 2**bits = {1 << bits}")
    n = codes.shape[-1]
    lead = codes.shape[:-1]
    if bits == 8:
        return codes.clone()
    if 8 % bits == 0:
        per = 8 // bits
        pad = (-n) % per
        c = torch.nn.functional.pad(codes, (0, pad)) if pad else codes
        c = c.reshape(*lead, (n + pad) // per, per).to(torch.int32)  # explicit sizes: lead may be empty
        shifts = torch.arange(per, dtype=torch.int32, device=codes.device) * bits
        return (c << shifts).sum(-1).to(torch.uint8)
    bit = torch.arange(8, dtype=torch.int32, device=codes.device)
    stream = (codes.unsqueeze(-1).to(torch.int32) >> bit[:bits]) & 1
    stream = stream.reshape(*lead, n * bits)
    pad = (-(n * bits)) % 8
    if pad:
        stream = torch.nn.functional.pad(stream, (0, pad))
    stream = stream.reshape(*lead, (n * bits + pad) // 8, 8)
    return (stream << bit).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: uint8 [..., ceil(n*bits/8)] -> uint8 codes [..., n]."""
    _check_bits(bits)
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed: must be torch.uint8, got {packed.dtype}")
    if packed.shape[-1] != packed_size(n, bits):
        raise ValueError(f"packed: last dim must be {packed_size(n, bits)} for n={n}, bits={bits}, "
                         f"got {packed.shape[-1]}")
    lead = packed.shape[:-1]
    if bits == 8:
        return packed.clone()
    p = packed.to(torch.int32)
    bit = torch.arange(8, dtype=torch.int32, device=packed.device)
    if 8 % bits == 0:
        per = 8 // bits
        shifts = bit[:per] * bits
        codes = (p.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
        return codes.reshape(*lead, packed.shape[-1] * per)[..., :n].to(torch.uint8)
    stream = ((p.unsqueeze(-1) >> bit) & 1).reshape(*lead, packed.shape[-1] * 8)
    stream = stream[..., : n * bits].reshape(*lead, n, bits)
    return (stream << bit[:bits]).sum(-1).to(torch.uint8)
