"""The Triton encode kernel under Triton's CPU interpreter: its correctly rounded division against
torch's float32 division, and whole encodings bit for bit against the torch reference over several
key groups per program, ragged last programs, odd batch x head counts and every bit width.

Side codes are checked exactly against the reference's own coding of ``c = U^T (k - k^)`` summed as
one float32 FMA chain in head_dim order (what the kernel computes, on the GPU too); the reference's
einsum may sum in another order (a CPU BLAS): tests/kernels/test_gpu.py compares the GPU's side
codes with it within one step, side scales exactly."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")  # the gpu extra; its interpreter needs no GPU
tl = pytest.importorskip("triton.language")

from headq_core.method.headq import encode_side  # noqa: E402
from headq_core.method.quant import dequantize, quantize  # noqa: E402
from headq_core.runtime.kernels.reference import encode_reference  # noqa: E402
from headq_core.runtime.kernels.triton_encode import divide, encode_triton, reciprocal  # noqa: E402
from tests.kernels.helpers import configs, random_basis, random_kv  # noqa: E402

FIELDS = ("k_codes", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero", "side", "side_scale")
FP16_SCALES = torch.arange(1, 0x7C00, dtype=torch.int16).view(torch.float16).float()  # every finite one > 0


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fma(a, b, c) rounded once: a*b is exact in float64, TwoSum gives the rounding error
    of the float64 sum, which decides the float32 rounding only where that sum is a float32 tie."""
    p = a.astype(np.float64) * b.astype(np.float64)
    c = c.astype(np.float64)
    s = p + c
    bv = s - p
    err = (p - (s - bv)) + (c - bv)
    r = s.astype(np.float32)
    up, down = np.nextafter(r, np.float32(np.inf)), np.nextafter(r, np.float32(-np.inf))
    r = np.where((s == (r.astype(np.float64) + up) / 2) & (err > 0), up, r)
    return np.where((s == (r.astype(np.float64) + down) / 2) & (err < 0), down, r)


@triton.jit
def _apply_divide(a_ptr, b_ptr, q_ptr, y_ptr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    b, y = reciprocal(tl.load(b_ptr + i))
    tl.store(y_ptr + i, y)
    tl.store(q_ptr + i, divide(tl.load(a_ptr + i), b, y))


def _divide(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a / b, 1 / b) by the kernel's reciprocal and division, float32 1-D of a multiple of 1024."""
    q, y = torch.empty_like(a), torch.empty_like(a)
    _apply_divide[(a.numel() // 1024,)](a, b, q, y, BLOCK=1024)
    return q, y


def test_reciprocal_is_exact_from_any_seed_within_two_to_the_minus_21():
    """The Newton step gives RN(1/b) for every finite fp16 b > 0 from seeds off by up to 8 ulps
    (2**-21 relative: the GPU's rsqrt.approx squared stays within 2**-21.6), and the kernel gives it."""
    b = FP16_SCALES.numpy()
    want = np.float32(1) / b
    for ulps in range(-8, 9):
        seed = (want * np.float32(1 + ulps * 2.0**-24)).astype(np.float32)
        got = _fma32(_fma32(-b, seed, np.ones_like(b)), seed, seed)
        assert np.array_equal(got, want), ulps
    pad = (-len(FP16_SCALES)) % 1024
    scales = torch.cat([FP16_SCALES, torch.ones(pad)])
    _, y = _divide(torch.ones_like(scales), scales)
    assert torch.equal(y, 1 / scales)


def test_divide_matches_torch_division_at_ties_and_across_exponents():
    """Every fp16 significand (at random exponents) against a next to b * (k + 1/2) for every code k
    of 8 bits (+-3 ulps: where rounding the quotient to a code flips), and random a over exponents."""
    gen = torch.Generator().manual_seed(1)
    b = (1 + torch.arange(1024) / 1024) * 2.0 ** torch.randint(-14, 15, (1024,), generator=gen)
    near = (b[:, None] * (torch.arange(256) + 0.5)).view(torch.int32)[..., None] + torch.arange(-3, 4)
    spread = torch.randn(1 << 15, generator=gen) * 2.0 ** torch.randint(-60, 17, (1 << 15,), generator=gen)
    a = torch.cat([near.int().view(torch.float32).flatten(), spread,
                   torch.tensor([0.0, -0.0, 1e-30, -65504.0, 131008.0, 2.0**-100])])
    b = torch.cat([b.repeat_interleave(256 * 7), b.repeat(len(a) // 1024 + 1)[: len(a) - 1024 * 256 * 7]])
    pad = (-len(a)) % 1024
    a, b = torch.cat([a, torch.ones(pad)]), torch.cat([b, torch.ones(pad)])
    q, _ = _divide(a, b)
    assert torch.equal(q, a / b)


def test_divide_by_an_overflowed_scale_rounds_to_zero():
    """An fp16 scale that overflowed (inf: 1-bit spans past 65504) divides every finite a to 0, as a/inf."""
    a = torch.linspace(-131008.0, 131008.0, 1024)
    q, _ = _divide(a, torch.full((1024,), float("inf")))
    assert torch.equal(torch.round(q).abs(), torch.zeros(1024))


def _side_by_fma_chain(k: torch.Tensor, key_cfg, basis: torch.Tensor, side_bits: int, fused: bool = True):
    """(side, side_scale) of the reference's coding of c = U^T (k - k^) summed as one float32 FMA
    chain over head_dim in order (``fused=False``: a rounded multiply, then an add)."""
    resid = (k.float() - dequantize(quantize(k.float(), key_cfg, n_quant=k.shape[2]))).numpy()
    u = basis.float().numpy()
    c = np.zeros((*resid.shape[:3], u.shape[-1]), np.float32)
    for j in range(resid.shape[-1]):
        r, uj = np.broadcast_to(resid[..., j, None], c.shape), np.broadcast_to(u[None, :, None, j], c.shape)
        c = _fma32(r, uj, c) if fused else (r * uj + c).astype(np.float32)
    # the reference's coding of c itself: an identity basis projects c exactly
    code = encode_side(torch.from_numpy(c), torch.eye(c.shape[-1]).expand(c.shape[1], -1, -1), side_bits)
    return code.codes, code.scale


@pytest.mark.parametrize("b,h,n,d,kbits,kgroup,vbits,vgroup,rank,side_bits,gpp,warps,dtype", [
    (1, 3, 80, 32, 2, 16, 2, 8, 5, 8, 4, 1, torch.bfloat16),   # 5 groups: the 2nd program has 1 of 4
    (3, 1, 96, 64, 4, 32, 4, 32, 8, 4, 2, 1, torch.float16),   # 16 lanes x 2 tokens per group
    (2, 2, 64, 16, 1, 16, 8, 4, 3, 16, 1, 1, torch.float32),   # one token per thread, 2 value groups a load
    (1, 2, 128, 32, 8, 64, 1, 1, 16, 8, 8, 2, torch.bfloat16),  # one program, 6 of its 8 groups absent
    (1, 1, 64, 128, 2, 32, 2, 128, 8, 8, 2, 2, torch.bfloat16),  # value groups of a whole row
    (2, 1, 96, 32, 2, 32, 4, 16, 1, 4, None, 1, torch.bfloat16),  # the default split, rank 1
])
def test_encode_matches_reference_bit_for_bit(b, h, n, d, kbits, kgroup, vbits, vgroup, rank, side_bits, gpp,
                                              warps, dtype):
    gen = torch.Generator().manual_seed(n + d + rank)
    k, v = random_kv(b, h, n, d, gen, dtype=dtype)
    u = random_basis(h, d, rank, gen)
    kc, vc = configs(kbits, kgroup, vbits, vgroup)
    got = encode_triton(k, v, kbits, kgroup, vbits, vgroup, u, side_bits, groups_per_program=gpp,
                        num_warps=warps)
    ref = encode_reference(k, v, kc, vc, u, side_bits)
    side, side_scale = _side_by_fma_chain(k, kc, u, side_bits)
    for name in FIELDS:
        want = {"side": side, "side_scale": side_scale}.get(name, getattr(ref, name))
        a = getattr(got, name)
        assert (a is None) == (want is None), name
        if a is not None:
            assert a.dtype == want.dtype and torch.equal(a, want), name


def test_encode_rounds_ties_to_even():
    """Inputs on a grid of quarter steps: many quotients end in .5 exactly (keys, values, side)."""
    gen = torch.Generator().manual_seed(4)
    k = torch.randint(0, 13, (2, 2, 64, 32), generator=gen).float() / 4
    v = torch.randint(-6, 7, (2, 2, 64, 32), generator=gen).float() / 4
    u = torch.randint(-8, 9, (2, 32, 4), generator=gen).float() / 8
    kc, vc = configs(2, 16, 2, 8)
    got = encode_triton(k, v, 2, 16, 2, 8, u, 8)
    ref = encode_reference(k, v, kc, vc, u, 8)
    side, side_scale = _side_by_fma_chain(k, kc, u, 8)
    for name in FIELDS:
        want = {"side": side, "side_scale": side_scale}.get(name, getattr(ref, name))
        assert torch.equal(getattr(got, name), want), name


def test_side_code_is_the_fma_chain_where_the_order_shows():
    """Residuals within 2**-10 of 1, equal in channels 2i and 2i+1, against basis rows +P_i and -P_i
    (P_i in [2**20, 2**21)): c is 0 but for the rounding of partial sums near 2**20, so swapping two
    neighbouring terms, or rounding each product, moves many fp16 side codes. Keys are built so
    that k - k^ is exactly such a residual: per channel and group of 16, tokens 0 and 4096 (1-bit
    codes 0 and 1: residual 0), then values m (code 0: residual m)."""
    gen = torch.Generator().manual_seed(7)
    k = (1 + torch.rand(1, 2, 32, 16, generator=gen) / 1024).repeat_interleave(2, dim=-1)
    k[:, :, 0::16], k[:, :, 1::16] = 0.0, 4096.0
    v = torch.randn(1, 2, 32, 32, generator=gen)
    u = (2.0**20 * (1 + torch.rand(2, 16, 4, generator=gen))).repeat_interleave(2, dim=1)
    u[:, 1::2] *= -1
    kc, _ = configs(1, 16, 2, 8)
    got = encode_triton(k, v, 1, 16, 2, 8, u, 16, groups_per_program=1)
    side, _ = _side_by_fma_chain(k, kc, u, 16)
    assert torch.equal(got.side, side)
    # the data tells orders apart: columns 4 and 5 swapped, or products rounded, move many codes
    swap = torch.arange(32)
    swap[4], swap[5] = 5, 4
    swapped = _side_by_fma_chain(k[..., swap], kc, u[:, swap], 16)[0]
    unfused = _side_by_fma_chain(k, kc, u, 16, fused=False)[0]
    assert (swapped != side).float().mean() > 0.2 and (unfused != side).float().mean() > 0.5


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the fp16 infs
def test_encode_without_basis_and_with_overflowing_scales():
    """Spans past the fp16 range at 1 bit give inf scales and code 0 there, as in the reference;
    no basis gives no side code."""
    gen = torch.Generator().manual_seed(5)
    k, v = random_kv(2, 1, 48, 32, gen)
    k[:, :, :16, 3] = torch.tensor([-40000.0, 40000.0]).repeat(8)
    v[0, 0, 5, :8] = torch.tensor([-60000.0, 60000.0]).repeat(4)
    kc, vc = configs(1, 16, 1, 8)
    got = encode_triton(k, v, 1, 16, 1, 8, None, 8, groups_per_program=2)
    ref = encode_reference(k, v, kc, vc)
    assert torch.isinf(ref.k_scale).any() and torch.isinf(ref.v_scale).any()
    for name in FIELDS:
        a, want = getattr(got, name), getattr(ref, name)
        assert (a is None) == (want is None), name
        if a is not None:
            assert torch.equal(a, want), name


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_side_scale_overflow_codes_zero():
    """A basis large enough to overflow the fp16 side scale: inf scales and zero codes, as the reference's."""
    gen = torch.Generator().manual_seed(6)
    k, v = random_kv(1, 2, 32, 32, gen, dtype=torch.bfloat16)
    u = random_basis(2, 32, 4, gen) * 1e7
    kc, _ = configs(2, 16, 2, 8)
    got = encode_triton(k, v, 2, 16, 2, 8, u, 8)
    side, side_scale = _side_by_fma_chain(k, kc, u, 8)
    assert torch.isinf(side_scale).any()
    assert torch.equal(got.side_scale, side_scale) and torch.equal(got.side, side)
