"""The tensor-core decode kernel (``mma_decode``) on a CUDA GPU against the float32 reference, on
random inputs drawn fresh each run (head_dim 128), and its place in :func:`decode_attention`'s
dispatch: ``"auto"`` takes it, falls back to Triton on a misaligned tensor, and a decode step replays
in a CUDA graph. Skipped without CUDA, without an sm_80+ GPU or NVRTC, and when this process imported
the kernels under TRITON_INTERPRET=1 (the split merge is a Triton kernel; run this file on its own)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from headq_core.runtime.kernels import decode_attention, encode, mma_decode, nvrtc, triton_decode
from headq_core.runtime.kernels.reference import decode_attention_reference
from testkit.mma_cases import CASES, start_for
from tests.kernels.helpers import configs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
D = 128
N = 4096  # quantized tokens (a whole number of key groups up to 128)


@pytest.fixture(autouse=True)
def _tensor_core_kernel():
    if "Interpreted" in type(triton_decode._decode_kernel).__name__:
        pytest.skip("kernels were imported under TRITON_INTERPRET=1 in this process")
    if torch.cuda.get_device_capability() < (8, 0) or not nvrtc.available():
        pytest.skip("the tensor-core kernel needs an sm_80+ GPU and NVRTC")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _inputs(case: tuple, b: int = 2):
    """(q, enc, k_res, v_res, basis, start) of one case on the GPU."""
    _name, kb, gk, vb, gv, rank, hq, hkv, dt, res, start, _softcap, _splits = case
    dtype = torch.bfloat16 if dt == "bf16" else torch.float16
    k = (torch.randn(b, hkv, N + res, D, device="cuda") + 2).to(dtype)
    v = torch.randn(b, hkv, N + res, D, device="cuda").to(dtype)
    u = torch.linalg.qr(torch.randn(hkv, D, rank, device="cuda"))[0] if rank else None
    enc = encode(k[:, :, :N], v[:, :, :N], *configs(kb, gk, vb, gv), basis=u)
    kr, vr = (k[:, :, N:].contiguous(), v[:, :, N:].contiguous()) if res else (None, None)
    q = torch.randn(b, hq, 1, D, device="cuda").to(dtype)
    st = start_for(start, N, "cuda")
    return q, enc, kr, vr, u, st


@pytest.fixture
def spies(monkeypatch):
    """Calls of the tensor-core kernel (True: it ran, False: it declined, alignment) and of the Triton
    kernel, counted by wrappers around the real functions."""
    calls: dict[str, list[bool]] = {"mma": [], "triton": []}
    real_mma, real_triton = mma_decode.decode_attention_mma, triton_decode.decode_attention_triton

    def mma(*args, **kwargs):
        out = real_mma(*args, **kwargs)
        calls["mma"].append(out is not None)
        return out

    def triton(*args, **kwargs):
        calls["triton"].append(True)
        return real_triton(*args, **kwargs)

    monkeypatch.setattr(mma_decode, "decode_attention_mma", mma)
    monkeypatch.setattr(triton_decode, "decode_attention_triton", triton)
    return calls


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mma_matches_reference_gpu(case, spies):
    """Through ``decode_attention(backend="mma")`` (the dispatch's launch), both signs of the HeadQ
    correction."""
    q, enc, kr, vr, u, st = _inputs(case)
    softcap, splits = case[11], case[12]
    assert mma_decode.covers(q, enc, kr)
    signs = (1, -1) if u is not None else (1,)
    for sign in signs:
        ref = decode_attention_reference(q, enc, kr, vr, u, D**-0.5, sign, st, softcap)
        got = decode_attention(q, enc, kr, vr, basis=u, sign=sign, backend="mma", num_splits=splits, start=st,
                               softcap=softcap)
        assert got is not None and got.dtype == q.dtype and got.shape == q.shape
        assert torch.isfinite(got).all() and _rel(got, ref) < 1e-2, sign
    assert spies["mma"] == [True] * len(signs) and spies["triton"] == []


def test_auto_takes_the_mma_kernel_gpu(spies):
    q, enc, kr, vr, u, _ = _inputs(CASES[0])
    got = decode_attention(q, enc, kr, vr, basis=u)
    assert spies["mma"] == [True] and spies["triton"] == []
    assert _rel(got, decode_attention_reference(q, enc, kr, vr, u, D**-0.5, 1)) < 1e-2


def test_auto_leaves_uncovered_layouts_to_triton_gpu(spies):
    """8-bit codes: not the tensor-core kernel's (2/4-bit), Triton's; ``"mma"`` raises."""
    q, _enc, kr, vr, _u, _ = _inputs(CASES[1])
    k, v = (torch.randn(2, 8, N, D, device="cuda").bfloat16() for _ in range(2))
    enc = encode(k, v, *configs(8, 32, 8, 32))
    assert not mma_decode.covers(q, enc, kr)
    got = decode_attention(q, enc, kr, vr)
    assert spies["mma"] == [] and spies["triton"] == [True]
    assert _rel(got, decode_attention_reference(q, enc, kr, vr, None, D**-0.5, 1)) < 1e-2
    with pytest.raises(ValueError, match="^backend: .*tensor-core kernel"):
        decode_attention(q, enc, kr, vr, backend="mma")


def _offset_by_a_row(t: torch.Tensor) -> torch.Tensor:
    """A copy of t [B, H, n, w] as the view [:, :, 1:] of a buffer one token row longer."""
    big = torch.empty(*t.shape[:2], t.shape[2] + 1, t.shape[3], dtype=t.dtype, device=t.device)
    big[:, :, 1:] = t
    return big[:, :, 1:]


def test_misaligned_rows_fall_back_to_triton_gpu(spies):
    """Value scales and zero-points as views one token row (4 groups x fp16 = 8 bytes) into their
    buffers: not 16-byte aligned, so the tensor-core kernel declines and Triton reads them."""
    q, enc, kr, vr, u, _ = _inputs(CASES[0])
    moved = dataclasses.replace(enc, v_scale=_offset_by_a_row(enc.v_scale),
                                v_zero=_offset_by_a_row(enc.v_zero))
    assert moved.v_scale.data_ptr() % 16 == 8 and mma_decode.covers(q, moved, kr)
    got = decode_attention(q, moved, kr, vr, basis=u)
    assert spies["mma"] == [False] and spies["triton"] == [True]
    assert _rel(got, decode_attention_reference(q, enc, kr, vr, u, D**-0.5, 1)) < 1e-2
    with pytest.raises(ValueError, match="^backend: .*16-byte aligned"):
        decode_attention(q, moved, kr, vr, basis=u, backend="mma")


def test_decode_step_replays_in_a_cuda_graph_gpu(spies):
    """``decode_attention`` ("auto": the tensor-core kernel and the split merge) captured in a CUDA
    graph after a warm-up on a side stream (which compiles both) replays to the eager result, and to
    the new one after the query is overwritten in place."""
    q, enc, kr, vr, u, _ = _inputs(CASES[0])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decode_attention(q, enc, kr, vr, basis=u)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, enc, kr, vr, basis=u)
    assert spies["mma"] == [True, True] and spies["triton"] == []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, decode_attention(q, enc, kr, vr, basis=u))
        assert _rel(out, decode_attention_reference(q, enc, kr, vr, u, D**-0.5, 1)) < 1e-2
        q.copy_(torch.randn_like(q))
