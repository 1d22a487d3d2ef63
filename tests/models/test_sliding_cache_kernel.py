"""The packed-cache decode path with a sliding-window start (issue 23): the pure-torch reference kernel
with ``start`` and ``softcap`` against softmax attention computed directly over the dequantized
tokens, the cache layer's kernel dispatch against its dense path, and the once-per-cache log when the
Triton kernel cannot take a step."""

from __future__ import annotations

import pytest
import torch

from headq_core.config import HeadQConfig, QuantConfig
from headq_core.models.attention import AttentionCall
from headq_core.runtime.cache import HeadQCache
from headq_core.runtime.kernels import decode_attention, encode
from headq_core.runtime.kernels.reference import dequantize_kv, dequantize_side
from tests.kernels.helpers import configs, random_basis, random_kv

KEY = QuantConfig(bits=2, axis="per_channel", group_size=8, residual=4)
VALUE = QuantConfig(bits=2, axis="per_token", group_size=8, residual=4)


@pytest.mark.parametrize(("start", "softcap"), [(0, None), (13, None), (20, 2.0)])
def test_reference_kernel_reads_from_the_window_start(start, softcap):
    """Logits of the quantized tokens (with the HeadQ term) and the residual window, capped, the first
    ``start`` tokens unseen: the same as a direct softmax over the visible tokens."""
    gen = torch.Generator().manual_seed(start)
    kc, vc = configs(2, 8, 4, 8)
    k, v = random_kv(1, 2, 40, 16, gen)
    u = random_basis(2, 16, 4, gen)
    enc = encode(k[:, :, :32], v[:, :, :32], kc, vc, basis=u, backend="reference")
    q = torch.randn(1, 4, 1, 16, generator=gen)
    out = decode_attention(q, enc, k[:, :, 32:], v[:, :, 32:], basis=u, scale=0.3, sign=-1,
                           backend="reference", start=start, softcap=softcap)
    kh, vh = dequantize_kv(enc)
    keys, values = torch.cat([kh, k[:, :, 32:]], 2), torch.cat([vh, v[:, :, 32:]], 2)
    qg = q.reshape(1, 2, 2, 16)
    logits = torch.einsum("bhgd,bhnd->bhgn", qg, keys)
    side = torch.einsum("bhgd,hdr,bhnr->bhgn", qg, u, dequantize_side(enc))
    logits[..., :32] -= side
    logits = logits * 0.3
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    probs = torch.softmax(logits[..., start:], -1)
    direct = torch.einsum("bhgn,bhnd->bhgd", probs, values[:, :, start:]).reshape(1, 4, 1, 16)
    torch.testing.assert_close(out, direct, rtol=1e-5, atol=1e-5)


def test_bad_start_and_softcap_name_the_field():
    gen = torch.Generator().manual_seed(1)
    k, v = random_kv(1, 2, 8, 16, gen)
    q = torch.randn(1, 4, 1, 16, generator=gen)
    with pytest.raises(ValueError, match="start"):
        decode_attention(q, None, k, v, start=8)
    with pytest.raises(ValueError, match="softcap"):
        decode_attention(q, None, k, v, softcap=0.0)


def _sliding_mask(n: int, window: int, first: int) -> torch.Tensor:
    """Additive [1, 1, 1, n] mask of the decode query at absolute position ``first + n - 1``."""
    pos = torch.arange(n) + first
    hidden = pos <= first + n - 1 - window
    return torch.where(hidden, torch.finfo(torch.float32).min, 0.0)[None, None, None]


@pytest.mark.parametrize("softcap", [None, 1.5])
def test_sliding_layer_reads_the_packed_codes_as_its_dense_path(softcap):
    """Three caches of the same sliding layers: ``kernel="reference"`` and ``"triton"`` (the
    interpreted kernel; packed codes from the window start, capped logits) and ``"off"`` (dense over
    the dequantized cache) attend alike step after step while groups are freed."""
    pytest.importorskip("triton")  # the gpu extra; tests/conftest.py interprets it without a GPU
    gen = torch.Generator().manual_seed(3)
    window, d = 10, 16
    u = random_basis(2, d, 4, gen)
    basis = torch.stack([u, u])
    headq = HeadQConfig(rank=4, side_bits=8)
    caches = {mode: HeadQCache(2, KEY, VALUE, headq, basis, windows=[window, window]) for mode in
              ("reference", "off", "triton")}
    for mode, cache in caches.items():
        for layer in cache.quant_layers:
            layer.kernel, layer.attached = mode, True
    k, v = random_kv(1, 2, 30, d, gen)
    for cache in caches.values():
        for layer in cache.quant_layers:
            layer.update(k, v)  # prefill: returns all 30, then frees what no later query sees
    for _ in range(12):
        k1, v1 = random_kv(1, 2, 1, d, gen)
        q = torch.randn(1, 4, 1, d, generator=gen)
        out = {}
        for mode, cache in caches.items():
            for i, layer in enumerate(cache.quant_layers):
                n, first = layer.get_mask_sizes(1)
                keys, values = layer.update(k1, v1)
                mask = _sliding_mask(n, window, first)
                call = AttentionCall(layer=i, query=q, key=keys, value=values, mask=mask, scaling=d**-0.5,
                                     softcap=softcap)
                out[(mode, i)] = layer.attend(call)
        layer = caches["reference"].quant_layers[0]
        assert layer.first > 0 and layer.get_seq_length() - layer.first <= window - 1 + 7 + 4
        for i in range(2):
            torch.testing.assert_close(out[("reference", i)], out[("off", i)], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out[("triton", i)], out[("reference", i)], rtol=2e-2, atol=2e-2)
