"""Unpacking of bit-packed code rows inside Triton kernels, without int-to-float conversions.

:func:`unpack` (float32 magic numbers; runs under ``TRITON_INTERPRET=1``) and :func:`unpack_ptx`
(inline PTX, GPU only: ``prmt`` + ``lop3`` + ``sub.f16x2`` per pair of codes) turn int32 words
[ROWS, D*BITS/32] of a little-endian bitstream into codes [ROWS, D] in channel order.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _plane(w, T: tl.constexpr, BITS: tl.constexpr):
    """Code ``T`` of every int32 word w (byte ``L = T // PER``, bits ``K = (T % PER) * BITS`` of it)
    as an exact float32, without an int-to-float conversion: the word is shifted by whole bytes, the
    code's bits masked in place and given the exponent that makes bit K worth 1, so the float is
    ``2**(23-K) + code``; subtracting ``2**(23-K)`` is exact. Only PER masks/exponents are used."""
    PER: tl.constexpr = 8 // BITS
    K: tl.constexpr = (T % PER) * BITS
    if T >= PER:
        w = w >> (8 * (T // PER))
    x = (w & (((1 << BITS) - 1) << K)) | ((150 - K) << 23)
    return x.to(tl.float32, bitcast=True) - (2.0 ** (23 - K))


@triton.jit
def _planes(w, T0: tl.constexpr, STEP: tl.constexpr, COUNT: tl.constexpr, BITS: tl.constexpr):
    """Codes T0, T0+STEP, ... (COUNT of them) of every word joined on new trailing axes, the lowest
    bit of the code index last (so a reshape restores code order)."""
    if COUNT == 1:
        return _plane(w, T0, BITS)
    else:
        return tl.join(_planes(w, T0, 2 * STEP, COUNT // 2, BITS),
                       _planes(w, T0 + STEP, 2 * STEP, COUNT // 2, BITS))


@triton.jit
def unpack(w, ROWS: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr):
    """Codes float32 [ROWS, D] of the little-endian bitstream rows w int32 [ROWS, D*BITS/32]
    (code ``c`` is bits ``(c % PER) * BITS`` of byte ``c // PER``, PER = 8/BITS). Every byte is
    loaded once; the codes never move between threads."""
    return tl.reshape(_planes(w, 0, 1, 32 // BITS, BITS), (ROWS, D))


def _unpack_ptx(bits: int) -> str:
    """PTX that turns one int32 word (input ``$n``, n = 32/bits) into its n codes as exact fp16
    (outputs ``$0..$n-1``), two neighbouring codes per 32-bit register: a ``prmt`` puts their byte(s)
    into both halves, one ``lop3`` masks code ``2m`` into the low half and code ``2m+1`` into the high
    half together with the fp16 exponents that make each code's lowest bit worth 1, and one
    ``sub.f16x2`` removes those powers of two (exact)."""
    n, per, low = 32 // bits, 8 // bits, (1 << bits) - 1
    lines = ["{", ".reg .b32 t, e;"]
    for pair in range(n // 2):
        lo_code, hi_code = 2 * pair, 2 * pair + 1
        lo_byte, hi_byte = lo_code // per, hi_code // per
        k_lo, k_hi = (lo_code % per) * bits, (hi_code % per) * bits
        mask = (low << k_lo) | (low << (16 + k_hi))
        e = ((25 - k_lo) << 10) | ((25 - k_hi) << 26)
        lines += [f"prmt.b32 t, ${n}, 0, {lo_byte | 4 << 4 | hi_byte << 8 | 4 << 12:#06x};",
                  f"mov.b32 e, {e:#010x};", f"lop3.b32 t, t, {mask:#010x}, e, 0xea;", "sub.f16x2 t, t, e;",
                  f"mov.b32 {{${lo_code}, ${hi_code}}}, t;"]
    return "\n".join([*lines, "}"])


PTX1, PTX2, PTX4, PTX8 = (tl.constexpr(_unpack_ptx(b)) for b in (1, 2, 4, 8))
OUT1, OUT2, OUT4, OUT8 = (tl.constexpr("=h," * (32 // b) + "r") for b in (1, 2, 4, 8))
F16 = tl.float16
TYPES1, TYPES2, TYPES4, TYPES8 = (tl.constexpr((F16,) * (32 // b)) for b in (1, 2, 4, 8))


@triton.jit
def _tjoin(t, T0: tl.constexpr, STEP: tl.constexpr, COUNT: tl.constexpr):
    """Elements T0, T0+STEP, ... of the tuple t joined like :func:`_planes`."""
    if COUNT == 1:
        return t[T0]
    else:
        return tl.join(_tjoin(t, T0, 2 * STEP, COUNT // 2), _tjoin(t, T0 + STEP, 2 * STEP, COUNT // 2))


@triton.jit
def unpack_ptx(w, ROWS: tl.constexpr, D: tl.constexpr, BITS: tl.constexpr):
    """:func:`unpack` by inline PTX (GPU only): codes fp16 [ROWS, D] of w int32 [ROWS, D*BITS/32]."""
    if BITS == 1:
        c = tl.inline_asm_elementwise(PTX1, OUT1, [w], dtype=TYPES1, is_pure=True, pack=1)
    elif BITS == 2:
        c = tl.inline_asm_elementwise(PTX2, OUT2, [w], dtype=TYPES2, is_pure=True, pack=1)
    elif BITS == 4:
        c = tl.inline_asm_elementwise(PTX4, OUT4, [w], dtype=TYPES4, is_pure=True, pack=1)
    else:
        c = tl.inline_asm_elementwise(PTX8, OUT8, [w], dtype=TYPES8, is_pure=True, pack=1)
    return tl.reshape(_tjoin(c, 0, 1, 32 // BITS), (ROWS, D))
