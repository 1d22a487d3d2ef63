"""The torch reference against direct computations from first principles (METHOD.md formulas)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from headq_core.method.quant import fake_quantize
from headq_core.runtime.kernels import decode_attention, encode
from headq_core.runtime.kernels.reference import dequantize_kv, dequantize_side
from tests.kernels.helpers import configs, random_basis, random_kv


def _dense_attention(q, k, v, scale):
    """Direct softmax(scale q k^T) v with explicit repeat of the KV heads; q [B, Hq, 1, d]."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    a = torch.softmax(scale * (q.double() @ k.double().transpose(-1, -2)), -1)
    return a @ v.double()


@pytest.mark.parametrize("kbits,vbits", [(2, 2), (3, 4), (4, 8)])
def test_dequantized_cache_matches_fake_quantize(kbits, vbits):
    gen = torch.Generator().manual_seed(kbits * 10 + vbits)
    k, v = random_kv(2, 2, 64, 32, gen)
    kc, vc = configs(kbits, 16, vbits, 8)
    kh, vh = dequantize_kv(encode(k, v, kc, vc, backend="reference"))
    assert torch.equal(kh, fake_quantize(k, kc, n_quant=64))
    assert torch.equal(vh, fake_quantize(v, vc, n_quant=64))


def test_side_code_is_projected_residual_within_half_step():
    gen = torch.Generator().manual_seed(1)
    k, v = random_kv(1, 2, 32, 32, gen)
    u = random_basis(2, 32, 6, gen)
    kc, vc = configs(2, 16, 2, 8)
    exact = torch.einsum("bhnd,hdr->bhnr", k - fake_quantize(k, kc, n_quant=32), u)
    for bits, qmax in ((8, 127), (4, 7)):
        enc = encode(k, v, kc, vc, basis=u, side_bits=bits, backend="reference")
        step = enc.side_scale.float().unsqueeze(-1)
        assert torch.all((dequantize_side(enc) - exact).abs() <= step / 2 + 1e-6)
        assert torch.allclose(step.squeeze(-1) * qmax, exact.abs().amax(-1), rtol=2e-3)
    enc16 = encode(k, v, kc, vc, basis=u, side_bits=16, backend="reference")
    assert torch.allclose(dequantize_side(enc16), exact, rtol=1e-3, atol=1e-3)


def test_decode_matches_direct_attention_on_fake_quantized_cache():
    gen = torch.Generator().manual_seed(2)
    k, v = random_kv(2, 2, 64, 32, gen)
    kr, vr = random_kv(2, 2, 5, 32, gen)
    q = torch.randn(2, 6, 1, 32, generator=gen)
    kc, vc = configs(2, 16, 2, 8)
    enc = encode(k, v, kc, vc, backend="reference")
    out = decode_attention(q, enc, kr, vr, scale=0.3, backend="reference")
    keys = torch.cat([fake_quantize(k, kc, n_quant=64), kr], 2)
    vals = torch.cat([fake_quantize(v, vc, n_quant=64), vr], 2)
    assert torch.allclose(out.double(), _dense_attention(q, keys, vals, 0.3), atol=1e-5)


def test_full_rank_fp16_correction_restores_dense_logits():
    """With r = d and a 16-bit side code, k^ + U c = k: the corrected attention is dense attention
    over the original keys (values quantized), up to fp16 rounding of c."""
    gen = torch.Generator().manual_seed(3)
    k, v = random_kv(1, 2, 32, 16, gen)
    q = torch.randn(1, 4, 1, 16, generator=gen)
    u = random_basis(2, 16, 16, gen)
    kc, vc = configs(2, 16, 4, 8)
    enc = encode(k, v, kc, vc, basis=u, side_bits=16, backend="reference")
    out = decode_attention(q, enc, basis=u, backend="reference")
    dense = _dense_attention(q, k, fake_quantize(v, vc, n_quant=32), 16 ** -0.5)
    plain = decode_attention(q, encode(k, v, kc, vc, backend="reference"), backend="reference")
    assert (out.double() - dense).abs().max() < 1e-3
    assert (plain.double() - dense).abs().max() > 10 * (out.double() - dense).abs().max()


@pytest.mark.parametrize("seq", [200, 150, 40])
def test_from_packed_cache_parts_matches_dense_attention_on_what_the_cache_holds(seq):
    """A cache's Packed keys/values (values quantized further than keys) and side code, turned into
    kernel inputs, give attention over exactly the keys/values the cache represents."""
    from headq_core.method.headq import correction_keys, decode_side, encode_side
    from headq_core.method.quant import dequantize, quantize
    from headq_core.runtime.kernels.layout import from_packed

    gen = torch.Generator().manual_seed(seq)
    k, v = random_kv(1, 2, seq, 32, gen)
    q = torch.randn(1, 4, 1, 32, generator=gen)
    u = random_basis(2, 32, 4, gen)
    kc, vc = configs(2, 16, 4, 8)
    kc, vc = dataclasses.replace(kc, residual=20), dataclasses.replace(vc, residual=20)
    keys, values = quantize(k, kc), quantize(v, vc)
    side = encode_side(k[:, :, : keys.n_quant] - dequantize(keys)[:, :, : keys.n_quant], u, 8)
    enc, k_res, v_res = from_packed(keys, values, side)
    out = decode_attention(q, enc, k_res, v_res, basis=u, backend="reference")
    k_eff = dequantize(keys)
    k_eff[:, :, : keys.n_quant] += correction_keys(u, decode_side(side))
    assert torch.allclose(out.double(), _dense_attention(q, k_eff, dequantize(values), 32 ** -0.5), atol=1e-5)
