"""Compiled Triton kernels on a CUDA GPU against the torch reference, on large random inputs drawn
fresh each run (Llama-3-8B head shapes), at bf16 tolerances. Skipped without CUDA, and when this
process imported the kernels under TRITON_INTERPRET=1 (run this file on its own then)."""

from __future__ import annotations

import pytest
import torch

from headq_core.runtime.kernels import decode_attention, encode
from headq_core.runtime.kernels.reference import dequantize_side
from tests.kernels.helpers import configs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
FIELDS = ("k_codes", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero", "side_scale")


@pytest.fixture(autouse=True)
def _compiled_kernels():
    from headq_core.runtime.kernels import triton_decode

    if "Interpreted" in type(triton_decode._decode_kernel).__name__:
        pytest.skip("kernels were imported under TRITON_INTERPRET=1 in this process")


def _inputs(b, h, n, r_len, rank, d=128, hq=32):
    dev = "cuda"
    k = (torch.randn(b, h, n, d, device=dev) + 3 * torch.randn(1, h, 1, d, device=dev)).bfloat16()
    v = torch.randn(b, h, n, d, device=dev).bfloat16()
    kr = torch.randn(b, h, r_len, d, device=dev).bfloat16()
    vr = torch.randn(b, h, r_len, d, device=dev).bfloat16()
    q = torch.randn(b, hq, 1, d, device=dev).bfloat16()
    u = torch.linalg.qr(torch.randn(h, d, rank, device=dev))[0]
    return q, k, v, kr, vr, u


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("kbits,vbits,side_bits", [(2, 2, 8), (4, 4, 4), (2, 4, 16)])
def test_encode_matches_reference_on_gpu(kbits, vbits, side_bits):
    q, k, v, *_rest, u = _inputs(4, 8, 4096, 0, 8)
    kc, vc = configs(kbits, 32, vbits, 32)
    got = encode(k, v, kc, vc, basis=u, side_bits=side_bits)
    ref = encode(k.cpu(), v.cpu(), kc, vc, basis=u.cpu(), side_bits=side_bits, backend="reference")
    got = got.to("cpu")
    for name in FIELDS:
        a, b = getattr(got, name), getattr(ref, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), name
    diff = (dequantize_side(got) - dequantize_side(ref)).abs()
    step = 1e-3 * diff.new_ones(()) if side_bits == 16 else ref.side_scale.float().unsqueeze(-1)
    assert torch.all(diff <= step * 1.001) and (diff > 0).float().mean() < 0.01


@pytest.mark.parametrize("b,n,r_len,side_bits,kbits,vbits,sign", [
    (2, 16384, 100, 8, 2, 2, 1), (1, 32768, 128, 8, 2, 2, -1), (4, 4096, 31, 4, 4, 4, 1),
    (3, 2048, 0, 16, 2, 4, 1),
])
def test_decode_matches_reference_on_gpu(b, n, r_len, side_bits, kbits, vbits, sign):
    q, k, v, kr, vr, u = _inputs(b, 8, n, r_len, 8)
    kc, vc = configs(kbits, 32, vbits, 32)
    enc = encode(k, v, kc, vc, basis=u, side_bits=side_bits)
    args = (q, enc, kr if r_len else None, vr if r_len else None)
    got = decode_attention(*args, basis=u, sign=sign).cpu()
    cpu = [None if t is None else t.to("cpu") for t in args]
    ref = decode_attention(*cpu, basis=u.cpu(), sign=sign, backend="reference")
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert _rel(got, ref) < 1e-2
    # the correction matters at this size: with the wrong sign the output moves well past the tolerance
    plain = decode_attention(*cpu, basis=u.cpu(), sign=-sign, backend="reference")
    assert _rel(plain, ref) > 2 * _rel(got, ref)


def test_decode_on_views_of_preallocated_buffers_gpu():
    q, k, v, kr, vr, u = _inputs(2, 8, 8192, 64, 8)
    kc, vc = configs(2, 32, 2, 32)
    enc = encode(k, v, kc, vc, basis=u)
    kbig = torch.randn(2, 8, 256, 128, device="cuda").bfloat16()
    vbig = torch.randn(2, 8, 256, 128, device="cuda").bfloat16()
    kbig[:, :, :64], vbig[:, :, :64] = kr, vr
    got = decode_attention(q, enc, kbig[:, :, :64], vbig[:, :, :64], basis=u)
    ref = decode_attention(q.cpu(), enc.to("cpu"), kr.cpu(), vr.cpu(), basis=u.cpu(), backend="reference")
    assert _rel(got.cpu(), ref) < 1e-2


def test_bf16_only_cache_is_split_across_programs_gpu():
    q, k, v, *_ = _inputs(1, 8, 20000, 0, 8)
    got = decode_attention(q, None, k, v).cpu()
    ref = decode_attention(q.cpu(), None, k.cpu(), v.cpu(), backend="reference")
    assert _rel(got, ref) < 1e-2


def test_ptx_and_float_unpacking_agree_gpu():
    """The inline-PTX code unpacking (default on the GPU) and the float32 one (the interpreter's)."""
    from headq_core.runtime.kernels.triton_decode import decode_attention_triton

    q, k, v, kr, vr, u = _inputs(2, 8, 8192, 50, 8)
    enc = encode(k, v, *configs(2, 32, 2, 32), basis=u)
    ref = decode_attention(q.cpu(), enc.to("cpu"), kr.cpu(), vr.cpu(), basis=u.cpu(), backend="reference")
    for ptx in (True, False):
        got = decode_attention_triton(q, enc, kr, vr, u, 128 ** -0.5, 1, block=128, ptx=ptx).cpu()
        assert _rel(got, ref) < 1e-2, ptx
