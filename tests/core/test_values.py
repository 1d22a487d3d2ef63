"""A² weights and the A² value policy: loops vs vectorised, step-by-step vs vectorised online rule."""

import pytest
import torch

from headq_core.config import QuantConfig, ValuePolicyConfig
from headq_core.method.quant import fake_quantize
from headq_core.method.schedule import decode_mask, leave_step
from headq_core.method.values import (
    OnlineA2,
    a2_weights,
    mixed_fake_quantize,
    online_keep_mask,
    online_scores,
    oracle_keep_mask,
    value_keep_mask,
)


def causal_attention(seed, b, hq, s):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, hq, s, s, generator=gen) * 2
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(-1)


@pytest.mark.parametrize(("hq", "hkv"), [(2, 2), (6, 2), (4, 1)])
def test_a2_weights_match_loops(hq, hkv):
    a = causal_attention(hq, 2, hq, 9)
    until = torch.tensor([0, 3, 2, 8, 5, 5, 6, 9, 8])
    for lim in (None, until):
        got = a2_weights(a, hkv, until=lim)
        for b in range(2):
            for h in range(hkv):
                for j in range(9):
                    want = sum(float(a[b, i, t, j]) ** 2 for i in range(h * hq // hkv, (h + 1) * hq // hkv)
                               for t in range(j, 9) if lim is None or t <= lim[j])
                    assert abs(float(got[b, h, j]) - want) < 1e-9
    # blocks of rows with an offset sum to the whole
    whole = a2_weights(a, hkv, until=until)
    parts = a2_weights(a[:, :, :4], hkv, until=until) + a2_weights(a[:, :, 4:], hkv, until=until, offset=4)
    torch.testing.assert_close(parts, whole)


def brute_force_online(scores, fraction):
    """The rule word for word: kept iff fewer than fraction*(j+1) tokens i <= j score strictly higher."""
    keep = torch.zeros(scores.shape, dtype=torch.bool)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in scores.shape[:-1]]).tolist():
        row = scores[tuple(idx)].tolist()
        for j, sj in enumerate(row):
            larger = sum(1 for i in range(j + 1) if row[i] > sj)
            keep[tuple(idx) + (j,)] = larger < fraction * (j + 1)
    return keep


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.6, 1.0])
@pytest.mark.parametrize("residual", [0, 3])
def test_online_rule_vectorised_equals_step_by_step(fraction, residual):
    hq, hkv, s = 4, 2, 30
    a = causal_attention(int(fraction * 10) + residual, 2, hq, s)
    cfg = QuantConfig(bits=2, axis="per_token", group_size=4, residual=residual)
    scores = online_scores(a, hkv, cfg)
    vec = online_keep_mask(scores, fraction, block=7)
    assert torch.equal(vec, brute_force_online(scores, fraction))
    state = OnlineA2(hkv, fraction)
    leave = leave_step(torch.arange(s), cfg)
    decided = []
    for t in range(s):
        state.observe(a[:, :, t:t + 1, : t + 1])  # a decode step sees the cache so far
        decided += [state.decide(j) for j in range(len(decided), s) if leave[j] == t]
    decided += [state.decide(j) for j in range(len(decided), s)]
    assert torch.equal(torch.stack(decided, -1), vec)
    if fraction == 1.0:
        assert vec.all()
    if fraction == 0.0:
        assert not vec.any()


@pytest.mark.parametrize("block", [1, 5, 128])
def test_online_scores_stop_at_leave_step(block):
    """Direct sums over the rows j..stop of each token, for any block of columns (banded rows)."""
    a = causal_attention(1, 1, 2, 12)
    cfg = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=2)
    got = online_scores(a, 1, cfg, block=block)
    first_quantized = decode_mask(12, 12, cfg).float().argmax(0)  # step each token is first read quantized
    for j in range(12):
        stop = int(first_quantized[j]) if decode_mask(12, 12, cfg)[:, j].any() else 11
        steps = torch.arange(j, stop + 1, dtype=torch.float64) + 1  # keys each step sees
        want = float((a[0, :, j:stop + 1, j].double() * steps).square().sum())
        assert abs(float(got[0, 0, j]) - want) < 1e-9


def test_oracle_is_exact_top_k_and_policy_dispatch():
    a = causal_attention(2, 2, 4, 20)
    a2 = a2_weights(a, 2)
    keep = oracle_keep_mask(a2, 0.25)
    assert (keep.sum(-1) == 5).all()
    kept_min = torch.where(keep, a2, torch.inf).amin(-1)
    dropped_max = torch.where(keep, -torch.inf, a2).amax(-1)
    assert (kept_min >= dropped_max).all()
    cfg = QuantConfig(bits=2, axis="per_token", group_size=4)
    oracle = ValuePolicyConfig(mode="oracle", keep_fraction=None, target_bits=3.0, high_bits=8)
    assert torch.equal(value_keep_mask(a, 2, oracle, cfg), oracle_keep_mask(a2, 1 / 6))
    online = ValuePolicyConfig(mode="online", keep_fraction=0.3)
    assert torch.equal(value_keep_mask(a, 2, online, cfg), online_keep_mask(online_scores(a, 2, cfg), 0.3))


def test_mixed_precision_values():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(2, 2, 10, 8, generator=gen)
    keep = torch.rand(2, 2, 10, generator=gen) > 0.5
    cfg = QuantConfig(bits=2, axis="per_token", group_size=4, residual=2)
    mixed = mixed_fake_quantize(v, cfg, keep, 8)
    high = fake_quantize(v, QuantConfig(bits=8, axis="per_token", group_size=4, residual=2))
    torch.testing.assert_close(mixed[keep], high[keep], rtol=0, atol=0)
    torch.testing.assert_close(mixed[~keep], fake_quantize(v, cfg)[~keep], rtol=0, atol=0)
    exact = mixed_fake_quantize(v, cfg, keep, 16)
    assert torch.equal(exact[keep], v[keep])


def test_errors():
    with pytest.raises(ValueError, match="kv_heads"):
        a2_weights(torch.zeros(1, 3, 2, 2), 2)
    with pytest.raises(ValueError, match="attn"):
        online_scores(torch.zeros(1, 2, 3, 4), 1, QuantConfig())
    with pytest.raises(ValueError, match="fraction"):
        OnlineA2(1, 1.5)
    state = OnlineA2(1, 0.5)
    state.observe(torch.ones(1, 1, 1, 1))
    with pytest.raises(ValueError, match="position"):
        state.decide(1)


def test_online_rule_with_ties():
    """Equal scores never count as larger: with all-equal scores every token is kept (f > 0)."""
    scores = torch.randint(0, 3, (2, 2, 25), generator=torch.Generator().manual_seed(0)).double()
    assert torch.equal(online_keep_mask(scores, 0.3, block=4), brute_force_online(scores, 0.3))
    assert online_keep_mask(torch.ones(1, 1, 10, dtype=torch.float64), 0.05).all()
    state = OnlineA2(1, 0.05)
    state.observe(torch.full((1, 1, 1, 10), 0.5))
    assert all(bool(state.decide(j)) for j in range(10))


@pytest.mark.parametrize("residual", [0, 32])
@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_online_rule_spends_about_its_budget_on_long_causal_attention(fraction, residual):
    """Raw attention shrinks like 1/t; scored relative to uniform, the running quantile keeps close
    to the budgeted share instead of a small fraction of it."""
    a = causal_attention(7, 1, 4, 512)
    cfg = QuantConfig(bits=2, axis="per_token", group_size=4, residual=residual)
    kept = float(online_keep_mask(online_scores(a, 2, cfg), fraction).double().mean())
    assert 0.5 * fraction < kept < 1.6 * fraction, kept  # the raw-A² rule kept ~1% at f = 0.1
