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


def _decoding_gpu(family: str = "llama", **overrides):
    """A tiny random bf16 model on the GPU (head_dim 32, 2 KV heads) and a maker of HeadQCaches for
    it: 2-bit K/V in groups of 32 with a residual of 32, HeadQ rank 8 (8-bit side codes), the
    kernel path of ``attached`` (``kernel="auto"``: Triton), no check in decode steps."""
    from headq_core.config import HeadQConfig, QuantConfig
    from headq_core.runtime.cache import HeadQCache
    from headq_core.runtime.layer_types import layer_windows
    from tests.models.tiny import build

    model = build(family, head_dim=32, **overrides).to("cuda", torch.bfloat16)
    layers = model.config.num_hidden_layers
    basis = torch.linalg.qr(torch.randn(layers, 2, 32, 8, generator=torch.Generator().manual_seed(0)))[0]
    key = QuantConfig(bits=2, axis="per_channel", group_size=32, residual=32)
    value = QuantConfig(bits=2, axis="per_token", group_size=32, residual=32)

    def make(kernel: str = "auto") -> HeadQCache:
        cache = HeadQCache(layers, key, value, HeadQConfig(rank=8, side_bits=8), basis,
                           windows=layer_windows(model.config), check_steps=False)
        for layer in cache.quant_layers:
            layer.kernel = kernel
        return cache

    return model, make


def _step_gpu(model, cache, ids, mask, t):
    """Logits [B, vocab] of decoding token ``t`` of ids [B, n] (``mask`` [B, n]: left padding)."""
    from headq_core.models.calls import cache_kwargs

    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=positions[:, t : t + 1],
                use_cache=True, **cache_kwargs(model, cache))
    return out.logits[:, -1]


def _prefill_gpu(model, cache, ids, mask, n):
    from headq_core.models.calls import cache_kwargs

    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    model(ids[:, :n], attention_mask=mask[:, :n], position_ids=positions[:, :n], use_cache=True,
          **cache_kwargs(model, cache))


def _batch_gpu(n: int, pad: int):
    """Token ids [2, n] and the attention mask of the second row left-padded by ``pad`` tokens."""
    ids = torch.randint(3, 90, (2, n), generator=torch.Generator().manual_seed(1)).cuda()
    mask = torch.ones(2, n, dtype=torch.long, device="cuda")
    mask[1, :pad] = 0
    return ids, mask


@pytest.mark.parametrize("family,overrides", [("llama", {}), ("mistral", {"sliding_window": 48})])
def test_cache_decode_steps_never_sync_gpu(family, overrides):
    """60 decode steps of an attached HeadQCache (keys quantized at two group boundaries, per-row
    starts of a left-padded batch, a sliding window's) under ``set_sync_debug_mode("error")``; their
    logits are those of the dequantizing path, and ``check()`` finds nothing."""
    model, make = _decoding_gpu(family, **overrides)
    ids, mask = _batch_gpu(102, 5)
    logits = {}
    for kernel in ("auto", "off"):
        cache = make(kernel)
        with torch.no_grad(), cache.attached(model):
            _prefill_gpu(model, cache, ids, mask, 40)
            _step_gpu(model, cache, ids, mask, 40)  # compiles the kernels
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error" if kernel == "auto" else "default")
            try:
                logits[kernel] = [_step_gpu(model, cache, ids, mask, t) for t in range(41, 101)]
            finally:
                torch.cuda.set_sync_debug_mode("default")
        cache.check()
        layer = cache.quant_layers[0]  # a sliding layer has freed the groups before its window
        assert layer.key_side.n_quant >= 32 and (layer.first > 0) == bool(overrides)
    for got, want in zip(logits["auto"], logits["off"], strict=True):
        assert torch.isfinite(got).all() and _rel(got, want) < 2e-2


def test_cache_decode_step_replays_in_a_cuda_graph_gpu():
    """A decode step captured in a CUDA graph (after warm-up steps on a side stream, as PyTorch's
    CUDA graph notes say) replays to the logits, and the grown cache, of the same step run eagerly
    on an identical cache."""
    model, make = _decoding_gpu()
    ids, mask = _batch_gpu(80, 3)
    eager, graphed = make(), make()

    def step(cache, t):
        with cache.attached(model):
            return _step_gpu(model, cache, ids, mask, t)

    with torch.no_grad():
        for cache in (eager, graphed):
            with cache.attached(model):
                _prefill_gpu(model, cache, ids, mask, 70)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for t in range(70, 73):
                for cache in (eager, graphed):
                    step(cache, t)
        torch.cuda.current_stream().wait_stream(side)
        want = step(eager, 73)
        # the graph reads the cache as it is now: keep those tensors alive until it has replayed
        inputs = [(s.tail, s.packed, s.side) for layer in graphed.quant_layers
                  for s in (layer.key_side, layer.value_side)]
        graph = torch.cuda.CUDAGraph()
        with graphed.attached(model), torch.cuda.graph(graph):
            got = _step_gpu(model, graphed, ids, mask, 73)
        graph.replay()
        torch.cuda.synchronize()
        del inputs
    assert _rel(got, want) < 1e-2
    for a, b in zip(eager.quant_layers, graphed.quant_layers, strict=True):
        assert torch.equal(a.value_side.packed.codes, b.value_side.packed.codes)
        assert torch.equal(a.key_side.tail, b.key_side.tail)
