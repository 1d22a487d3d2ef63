"""Bit packing: exact round trip for every width, the documented bitstream layout, bad input."""

import pytest
import torch

from headq_core.method.packing import pack_bits, packed_size, unpack_bits


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("n", [1, 7, 16, 33, 128])
def test_round_trip_bit_exact(bits, n):
    gen = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 1 << bits, (3, 2, n), generator=gen, dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (3, 2, packed_size(n, bits)) == (3, 2, (n * bits + 7) // 8)
    assert torch.equal(unpack_bits(packed, bits, n), codes)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_layout_matches_explicit_bitstream(bits):
    """Independent reference: build the little-endian bitstream with Python integers."""
    gen = torch.Generator().manual_seed(bits)
    n = 21
    codes = torch.randint(0, 1 << bits, (n,), generator=gen, dtype=torch.uint8)
    stream = 0
    for i, c in enumerate(codes.tolist()):
        stream |= c << (i * bits)
    expected = [(stream >> (8 * b)) & 0xFF for b in range((n * bits + 7) // 8)]
    assert pack_bits(codes, bits).tolist() == expected


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="bits"):
        pack_bits(torch.zeros(4, dtype=torch.uint8), 0)
    with pytest.raises(ValueError, match="bits"):
        pack_bits(torch.zeros(4, dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="codes"):
        pack_bits(torch.full((4,), 4, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="codes"):
        pack_bits(torch.zeros(4, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="packed"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 2, 16)
