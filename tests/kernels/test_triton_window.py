"""The Triton decode kernel (interpreted on the CPU) with a window start, per-row starts, logit
soft-capping and both split merges, against the pure-torch reference kernel, which
tests/models/test_sliding_cache_kernel.py checks against attention computed directly."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")  # the gpu extra; its interpreter needs no GPU

from headq_core.runtime.kernels import decode_attention, encode  # noqa: E402
from headq_core.runtime.kernels.triton_decode import decode_attention_triton  # noqa: E402
from tests.kernels.helpers import configs, random_basis, random_kv  # noqa: E402

N, R, D = 64, 24, 32  # quantized tokens (4 key groups of 16), residual tokens, head_dim


def _case(seed: int, side_bits: int = 8, batch: int = 2):
    gen = torch.Generator().manual_seed(seed)
    k, v = random_kv(batch, 2, N + R, D, gen, torch.bfloat16)
    u = random_basis(2, D, 4, gen)
    kc, vc = configs(2, 16, 2, 8)
    enc = encode(k[:, :, :N], v[:, :, :N], kc, vc, basis=u, side_bits=side_bits, backend="reference")
    q = torch.randn(batch, 4, 1, D, generator=gen).to(torch.bfloat16)
    return q, enc, k[:, :, N:], v[:, :, N:], u


def _both(q, enc, kr, vr, u, **kw):
    got = decode_attention(q, enc, kr, vr, basis=u, backend="triton", **kw).float()
    ref = decode_attention(q, enc, kr, vr, basis=u, backend="reference", **kw).float()
    return got, ref


def _close(got, ref):
    assert torch.isfinite(got).all()
    assert ((got - ref).norm() / ref.norm()).item() < 5e-3


@pytest.mark.parametrize("start", [0, 5, 16, 40, N, N + 7, N + R - 1])
@pytest.mark.parametrize("splits", [1, 3, 7])
def test_window_start_matches_the_reference(start, splits):
    """Starts inside the first key group, on a group boundary, in a later block, at the first
    residual token, inside the residual and at the last token; one split (no merge) and several."""
    q, enc, kr, vr, u = _case(start * 10 + splits)
    _close(*_both(q, enc, kr, vr, u, sign=-1, start=start, num_splits=splits))


@pytest.mark.parametrize("side_bits", [4, 8, 16])
@pytest.mark.parametrize("softcap", [0.5, 3.0, 50.0])
def test_softcap_matches_the_reference(softcap, side_bits):
    """Capping strong enough to change the attention (0.5) and nearly the identity (50)."""
    q, enc, kr, vr, u = _case(int(softcap * 10) + side_bits, side_bits)
    got, ref = _both(q, enc, kr, vr, u, start=9, softcap=softcap, num_splits=4)
    _close(got, ref)
    plain = decode_attention(q, enc, kr, vr, basis=u, backend="reference", start=9).float()
    if softcap == 0.5:
        assert (plain - ref).norm() > 0.05 * ref.norm()  # the cap really changes the output


@pytest.mark.parametrize("splits", [1, 4])
def test_per_row_starts_read_each_row_from_its_own_start(splits):
    """A tensor start [B]: each batch row as if decoded alone with its int start (left padding)."""
    q, enc, kr, vr, u = _case(7, batch=3)
    starts = torch.tensor([0, 37, N + 3])
    got, ref = _both(q, enc, kr, vr, u, start=starts, num_splits=splits)
    _close(got, ref)
    for row, s in enumerate(starts.tolist()):
        alone = decode_attention(q, enc, kr, vr, basis=u, backend="reference", start=s)
        torch.testing.assert_close(ref[row], alone[row].float())


def test_many_splits_some_before_the_start_merge_to_the_reference():
    """More splits than tokens per block allow (11), several of them wholly before the window start
    (their partials hold no token: log-sum-exp -inf), merged by the second launch."""
    q, enc, kr, vr, u = _case(11)
    got = decode_attention_triton(q, enc, kr, vr, u, D ** -0.5, 1, num_splits=11, start=40).float()
    ref = decode_attention(q, enc, kr, vr, basis=u, backend="reference", start=40, sign=1).float()
    _close(got, ref)


def test_start_tensor_is_validated():
    q, enc, kr, vr, u = _case(1)
    with pytest.raises(ValueError, match=r"start: expected an integer tensor \[B=2\]"):
        decode_attention(q, enc, kr, vr, basis=u, start=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"start: expected an integer tensor \[B=2\]"):
        decode_attention(q, enc, kr, vr, basis=u, start=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="start: must be an integer"):
        decode_attention(q, enc, kr, vr, basis=u, start=True)
