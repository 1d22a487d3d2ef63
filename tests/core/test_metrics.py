"""Every metric against the loop-by-loop float64 reference, and the properties METHOD.md states."""

import pytest
import torch

from headq_core.config import QuantConfig
from headq_core.evaluation.metrics import SCORE_METRICS, HeadMetrics, allowed_mask, layer_metrics
from headq_core.method.quant import fake_quantize
from headq_core.method.schedule import decode_mask
from tests.core.refs import reference_metrics, reference_tensor_mse

GQA = [(2, 2), (6, 2), (4, 1)]  # (q_heads, kv_heads): ratios 1, 3, 4


def random_case(seed, b, hq, hkv, t, s, d, noise=0.3):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, t, d, generator=gen) * 1.5
    k = torch.randn(b, hkv, s, d, generator=gen)
    k_hat = k + noise * torch.randn(b, hkv, s, d, generator=gen)
    v = torch.randn(b, hkv, s, d, generator=gen)
    v_hat = v + noise * torch.randn(b, hkv, s, d, generator=gen)
    return q, k, k_hat, v, v_hat


def logits(q, k, tau):
    g = q.shape[1] // k.shape[1]
    return tau * q @ k.repeat_interleave(g, dim=1).transpose(-1, -2)


def assert_close(got, want, rtol=2e-4, atol=1e-9):
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=rtol, atol=atol)


@pytest.mark.parametrize(("hq", "hkv"), GQA)
@pytest.mark.parametrize(("b", "t", "s", "offset"), [(1, 9, 9, 0), (2, 5, 11, 6), (2, 12, 12, 0)])
def test_all_metrics_match_reference(hq, hkv, b, t, s, offset):
    d, tau = 8, 8 ** -0.5
    q, k, k_hat, v, v_hat = random_case(hq * 100 + t, b, hq, hkv, t, s, d)
    vmask = decode_mask(t, s, QuantConfig(bits=2, axis="per_token", group_size=4, residual=2),
                        offset=offset)
    got = layer_metrics(q, k, k_hat, tau, v=v, v_hat=v_hat, value_mask=vmask, offset=offset, block=4)
    allowed = allowed_mask(t, s, None, offset)
    want = reference_metrics(logits(q, k, tau), logits(q, k_hat, tau), allowed, v_hat - v, vmask)
    for name, ref in want.items():
        assert_close(got[name], ref)
    assert_close(got["key_mse"], reference_tensor_mse(k, k_hat, hq))
    assert_close(got["value_mse"], reference_tensor_mse(v, v_hat, hq))


@pytest.mark.parametrize(("hq", "hkv"), GQA)
def test_bool_and_additive_masks_and_empty_rows(hq, hkv):
    b, t, s, d = 2, 6, 7, 4
    q, k, k_hat, v, v_hat = random_case(7 + hq, b, hq, hkv, t, s, d, noise=1.0)
    gen = torch.Generator().manual_seed(3)
    allowed = torch.rand(t, s, generator=gen) > 0.4
    allowed[2] = False  # a row with nothing allowed is skipped
    allowed[0, 0] = True
    s_d, s_h = logits(q, k, 0.5), logits(q, k_hat, 0.5)
    want = reference_metrics(s_d, s_h, allowed, v_hat - v)
    for mask in (allowed, torch.zeros(t, s).masked_fill(~allowed, float("-inf")),
                 torch.zeros(1, 1, t, s).masked_fill(~allowed, torch.finfo(torch.float32).min)):
        acc = HeadMetrics(hq, hkv)
        acc.add_logits(s_d, s_h, mask=mask, eps=v_hat - v)
        got = acc.result()
        for name, ref in want.items():
            assert_close(got[name], ref)
    # an additive mask with a finite bias (ALiBi-like) shapes both attentions; the error is unchanged
    bias = torch.randn(t, s, generator=gen)
    acc = HeadMetrics(hq, hkv)
    acc.add_logits(s_d, s_h, mask=bias.masked_fill(~allowed, float("-inf")), eps=v_hat - v)
    got = acc.result()
    for name, ref in reference_metrics(s_d + bias, s_h + bias, allowed, v_hat - v).items():
        assert_close(got[name], ref)


def test_row_constant_invariance():
    q, k, k_hat, _, _ = random_case(1, 2, 4, 2, 10, 10, 8)
    s_d, s_h = logits(q, k, 0.3), logits(q, k_hat, 0.3)
    shift = torch.randn(2, 4, 10, 1) * 5
    base, moved = HeadMetrics(4, 2), HeadMetrics(4, 2)
    base.add_logits(s_d, s_h)
    moved.add_logits(s_d, s_h + shift)
    r0, r1 = base.result(), moved.result()
    for name in ("fisher", "attn_kl", "route_flip", "entropy"):
        torch.testing.assert_close(r0[name], r1[name], rtol=1e-4, atol=1e-7)
    assert (r1["score_mse"] > r0["score_mse"]).all()


def test_kl_matches_fisher_for_small_errors_at_8_bits():
    gen = torch.Generator().manual_seed(5)
    b, hq, hkv, s, d = 1, 4, 2, 256, 32
    q = torch.randn(b, hq, s, d, generator=gen) * 2
    k = torch.randn(b, hkv, s, d, generator=gen)
    k8 = fake_quantize(k, QuantConfig(bits=8, axis="per_channel", group_size=32))
    out = layer_metrics(q, k, k8, d ** -0.5)
    ratio = out["attn_kl"] / out["fisher"]
    assert ((ratio - 1).abs() < 0.05).all(), ratio
    assert (out["fisher"] > 0).all()


def test_long_context_stability():
    """4096 keys with sharp logits: finite metrics, KL still agrees with a float64 evaluation."""
    gen = torch.Generator().manual_seed(9)
    s_n, d = 4096, 16
    q = torch.randn(1, 1, 4, d, generator=gen) * 6
    k = torch.randn(1, 1, s_n, d, generator=gen)
    k_hat = k + 1e-3 * torch.randn(1, 1, s_n, d, generator=gen)
    s_d, s_h = logits(q, k, 1.0), logits(q, k_hat, 1.0)
    acc = HeadMetrics(1, 1)
    acc.add_logits(s_d, s_h, offset=s_n - 4)
    got = acc.result()["attn_kl"]
    lp, lph = s_d.double().log_softmax(-1), s_h.double().log_softmax(-1)
    want = (lp.exp() * (lp - lph)).sum(-1).mean()
    torch.testing.assert_close(got, want.reshape(1), rtol=2e-2, atol=0)


def test_bad_inputs_raise():
    acc = HeadMetrics(4, 2)
    with pytest.raises(ValueError, match="s_hat"):
        acc.add_logits(torch.zeros(1, 4, 3, 3), torch.zeros(1, 4, 3, 4))
    bad = torch.zeros(1, 4, 3, 3)
    bad[0, 0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="s"):
        acc.add_logits(bad, torch.zeros(1, 4, 3, 3))
    with pytest.raises(ValueError, match="mask"):
        acc.add_logits(torch.zeros(1, 4, 3, 3), torch.zeros(1, 4, 3, 3),
                       mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="kv_heads"):
        HeadMetrics(4, 3)
    with pytest.raises(ValueError, match="k"):
        layer_metrics(torch.zeros(1, 4, 3, 8), torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), 1.0)


def test_layer_metrics_a2_and_offset_match_direct():
    hq, hkv, b, t, s, d = 4, 2, 2, 6, 10, 4
    q, k, k_hat, _, _ = random_case(11, b, hq, hkv, t, s, d)
    got = layer_metrics(q, k, k_hat, 0.7, offset=s - t, block=4, track_a2=True)
    allowed = allowed_mask(t, s, None, s - t)
    attn = logits(q, k, 0.7).double().masked_fill(~allowed, float("-inf")).softmax(-1)
    want = attn.square().reshape(b, hkv, hq // hkv, t, s).sum((2, 3))
    torch.testing.assert_close(got["a2_weights"], want, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="offset"):
        layer_metrics(q, k, k_hat, 0.7, offset=s - t + 1)


def test_value_a2_is_the_expected_readout_error():
    """For independent zero-mean value errors E[readout_err] = value_a2 (Monte Carlo: the draws
    are the batch, which the metrics average over)."""
    gen = torch.Generator().manual_seed(12)
    hq, hkv, t, d, draws = 4, 2, 8, 4, 2000
    q, k, _, v, _ = random_case(12, 1, hq, hkv, t, t, d)
    q, k, v = q.expand(draws, -1, -1, -1), k.expand(draws, -1, -1, -1), v.expand(draws, -1, -1, -1)
    sigma = torch.linspace(0.1, 1.0, t).view(1, 1, t, 1)  # per-token error scale
    out = layer_metrics(q, k, k, 0.5, v=v, v_hat=v + sigma * torch.randn(draws, hkv, t, d, generator=gen))
    torch.testing.assert_close(out["readout_err"], out["value_a2"], rtol=0.05, atol=0)


def test_huge_logit_errors_use_the_exact_branch():
    """Errors far beyond exp's range (|delta| ~ 100) still give the reference KL and flips."""
    gen = torch.Generator().manual_seed(13)
    s_d = torch.randn(1, 2, 6, 6, generator=gen) * 3
    s_h = s_d + 100 * torch.randn(1, 2, 6, 6, generator=gen)
    acc = HeadMetrics(2, 1)
    acc.add_logits(s_d, s_h)
    want = reference_metrics(s_d, s_h, allowed_mask(6, 6))
    for name in SCORE_METRICS:
        assert_close(acc.result()[name], want[name])
