"""Triton kernels (run by Triton's CPU interpreter) against the torch reference on small shapes.

``TRITON_INTERPRET=1`` is set before anything imports the kernel modules, so in this process the
kernels are interpreted; tests/kernels/test_gpu.py skips itself when it finds them so. The decode
kernel multiplies fp16 operands (fp32 accumulation), hence the ~1e-3 tolerances on float32 inputs.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")  # the gpu extra; its interpreter needs no GPU
tl = pytest.importorskip("triton.language")

from headq_core.runtime.kernels import decode_attention, encode  # noqa: E402
from headq_core.runtime.kernels.layout import EncodedKV  # noqa: E402
from headq_core.runtime.kernels.reference import dequantize_side  # noqa: E402
from headq_core.runtime.kernels.triton_encode import round_half_even  # noqa: E402
from tests.kernels.helpers import configs, random_basis, random_kv  # noqa: E402

FIELDS = ("k_codes", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero", "side", "side_scale")


@pytest.mark.parametrize("kbits,vbits,side_bits", [(2, 2, 8), (4, 2, 4), (2, 4, 16), (1, 8, 8)])
def test_encode_matches_reference_bit_for_bit(kbits, vbits, side_bits):
    gen = torch.Generator().manual_seed(kbits * 100 + vbits * 10 + side_bits)
    k, v = random_kv(2, 2, 48, 32, gen, dtype=torch.bfloat16)
    u = random_basis(2, 32, 5, gen)
    kc, vc = configs(kbits, 16, vbits, 8)
    got = encode(k, v, kc, vc, basis=u, side_bits=side_bits, backend="triton")
    ref = encode(k, v, kc, vc, basis=u, side_bits=side_bits, backend="reference")
    for name in FIELDS:
        a, b = getattr(got, name), getattr(ref, name)
        assert (a is None) == (b is None), name
        if a is not None and name != "side":
            assert torch.equal(a, b), name
    # side codes: the two paths sum U^T rho in different orders, so a code may move by one step at a
    # rounding tie, never more, and almost never
    if side_bits == 16:
        assert torch.allclose(got.side.float(), ref.side.float(), rtol=1e-3, atol=1e-3)
    else:
        step = ref.side_scale.float().unsqueeze(-1)
        diff = (dequantize_side(got) - dequantize_side(ref)).abs()
        assert torch.all(diff <= step * 1.001) and (diff > 0).float().mean() < 0.01

def _case(gen, n, r_len, side_bits, kbits=2, vbits=2, hq=6, dtype=torch.bfloat16):
    k, v = random_kv(2, 2, n, 32, gen, dtype)
    kr, vr = random_kv(2, 2, r_len, 32, gen, dtype)
    q = torch.randn(2, hq, 1, 32, generator=gen).to(dtype)
    u = random_basis(2, 32, 4, gen)
    kc, vc = configs(kbits, 16, vbits, 8)
    enc = encode(k, v, kc, vc, basis=u if side_bits else None, side_bits=side_bits or 8, backend="reference")
    return q, enc, kr, vr, u


@pytest.mark.parametrize("n,r_len,side_bits,splits,sign", [
    (64, 5, 8, 1, 1), (64, 5, 8, 3, -1), (80, 0, 4, 2, 1), (48, 21, 16, None, 1), (32, 3, 0, 2, 1),
])
def test_decode_matches_reference(n, r_len, side_bits, splits, sign):
    gen = torch.Generator().manual_seed(n + r_len + side_bits)
    q, enc, kr, vr, u = _case(gen, n, r_len, side_bits)
    kw = {"basis": u, "scale": 0.2, "sign": sign}
    got = decode_attention(q, enc, kr, vr, backend="triton", num_splits=splits, **kw)
    ref = decode_attention(q, enc, kr, vr, backend="reference", **kw)
    assert got.shape == ref.shape and got.dtype == q.dtype
    assert torch.allclose(got.float(), ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("kbits,vbits", [(4, 4), (8, 1)])
def test_decode_other_widths_and_gqa_group_of_one(kbits, vbits):
    gen = torch.Generator().manual_seed(kbits + vbits)
    q, enc, kr, vr, u = _case(gen, 32, 4, 8, kbits, vbits, hq=2, dtype=torch.float32)
    got = decode_attention(q, enc, kr, vr, basis=u, backend="triton", num_splits=2)
    ref = decode_attention(q, enc, kr, vr, basis=u, backend="reference")
    assert torch.allclose(got, ref, atol=3e-3, rtol=3e-3)


def test_decode_residual_only_and_quantized_only():
    gen = torch.Generator().manual_seed(7)
    q, enc, kr, vr, u = _case(gen, 32, 150, 8, dtype=torch.float32)
    for args in ((None, kr, vr), (enc, None, None)):
        got = decode_attention(q, *args, basis=u, backend="triton", num_splits=3)
        assert torch.allclose(got, decode_attention(q, *args, basis=u, backend="reference"), atol=3e-3)


def test_decode_reads_token_slices_of_preallocated_buffers():
    """The cache may hand the kernel views of larger buffers: [B, H, :N] slices, no copies."""
    gen = torch.Generator().manual_seed(8)
    q, enc, kr, vr, u = _case(gen, 64, 6, 8, dtype=torch.float32)
    views = {}
    for name in ("k_codes", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero", "side", "side_scale"):
        t = getattr(enc, name)
        big = torch.full((t.shape[0], t.shape[1], t.shape[2] * 2, *t.shape[3:]), 77, dtype=t.dtype)
        big[:, :, : t.shape[2]] = t
        views[name] = big[:, :, : t.shape[2]]
    sliced = EncodedKV(**{**enc.__dict__, **views})
    kbig = torch.randn(2, 2, 16, 32, generator=gen)
    kbig[:, :, :6] = kr
    vbig = torch.randn(2, 2, 16, 32, generator=gen)
    vbig[:, :, :6] = vr
    got = decode_attention(q, sliced, kbig[:, :, :6], vbig[:, :, :6], basis=u, backend="triton", num_splits=2)
    assert torch.allclose(got, decode_attention(q, enc, kr, vr, basis=u, backend="reference"), atol=3e-3)


@triton.jit
def _apply_round(x_ptr, o_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    tl.store(o_ptr + i, round_half_even(tl.load(x_ptr + i)))


def test_round_half_even_matches_torch_round_at_the_edges():
    below_half = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0)).item()
    edges = [below_half, 0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, 2.5 - 2.4e-7, 254.5, -126.5, 7.0, 0.0, -0.49]
    x = torch.cat([torch.tensor(edges), torch.randn(1024 - len(edges)) * 50]).float()
    out = torch.empty_like(x)
    _apply_round[(1,)](x, out, N=1024)
    assert torch.equal(out, torch.round(x))


def test_cache_decode_steps_read_the_packed_cache_with_the_kernel():
    """HeadQCacheLayer under ``attached``: single-token steps hand the packed cache (values ahead of
    keys, residual windows, side code) to the interpreted Triton kernel and give the dense path's
    attention; the prefill stays dense."""
    from headq_core.config import HeadQConfig, QuantConfig
    from headq_core.models.attention import AttentionCall
    from headq_core.runtime.cache import HeadQCacheLayer

    gen = torch.Generator().manual_seed(9)
    kc = QuantConfig(bits=2, axis="per_channel", group_size=16, residual=8)
    vc = QuantConfig(bits=4, axis="per_token", group_size=8, residual=8)
    u = random_basis(2, 32, 4, gen)
    layers = {mode: HeadQCacheLayer(kc, vc, HeadQConfig(rank=4, side_bits=8, sign=-1), u)
              for mode in ("triton", "off")}
    k, v = random_kv(1, 2, 40, 32, gen, torch.bfloat16)
    for mode, layer in layers.items():
        layer.kernel, layer.attached = mode, True
        assert layer.update(k, v)[0].shape[-2] == 40
    for _ in range(3):
        k1, v1 = random_kv(1, 2, 1, 32, gen, torch.bfloat16)
        q = torch.randn(1, 4, 1, 32, generator=gen).bfloat16()
        out = {}
        for mode, layer in layers.items():
            keys, values = layer.update(k1, v1)
            assert keys.shape[-2] == (1 if mode == "triton" else layer.get_seq_length())
            call = AttentionCall(layer=0, query=q, key=keys, value=values, mask=None, scaling=32 ** -0.5)
            out[mode] = layer.attend(call)
        assert layers["triton"].value_side.n_quant > layers["triton"].key_side.n_quant > 0
        assert torch.allclose(out["triton"].float(), out["off"].float(), atol=2e-2, rtol=2e-2)
    # a mask that hides a leading prefix (left padding): the kernel reads from the row's start
    n = layers["off"].get_seq_length() + 1
    for hidden, ok in ((slice(0, 3), True), (slice(3, 4), False)):
        mask = torch.zeros(1, 1, 1, n)
        mask[..., hidden] = torch.finfo(torch.float32).min
        k1, v1 = random_kv(1, 2, 1, 32, gen, torch.bfloat16)
        q = torch.randn(1, 4, 1, 32, generator=gen).bfloat16()
        out = {}
        for mode, layer in layers.items():
            keys, values = layer.update(k1, v1)
            out[mode] = layer.attend(AttentionCall(layer=0, query=q, key=keys, value=values, mask=mask,
                                                   scaling=32 ** -0.5))
        n += 1
        if ok:
            assert torch.allclose(out["triton"].float(), out["off"].float(), atol=2e-2, rtol=2e-2)
        else:  # a hole in the middle is no per-row start: recorded, raised by the next check
            with pytest.raises(ValueError, match="^mask:"):
                layers["triton"].check()


def test_combine_merges_many_splits_in_chunks():
    """The split combine against softmax weights computed directly, with more splits than one step
    takes (300 > 256) and a split that saw no token (lse = -inf)."""
    from headq_core.runtime.kernels.triton_decode import _combine_kernel

    gen = torch.Generator().manual_seed(10)
    o = torch.randn(3, 300, 64, generator=gen)
    lse = torch.randn(3, 300, generator=gen) * 4
    lse[1, 7] = float("-inf")
    out = torch.empty(3, 64)
    _combine_kernel[(3, 2)](o, lse, out, 300, D=64, DC=32, SB=256)
    w = torch.softmax(lse * torch.log(torch.tensor(2.0)), dim=-1)
    assert torch.allclose(out, torch.einsum("rs,rsd->rd", w, o), atol=1e-5)
