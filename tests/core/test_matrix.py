"""One parametrised matrix: every quantizer (bits x axis x residual) x HeadQ variant x value policy,
end to end on a tiny random layer. Checks what must hold for every cell: metrics finite and
non-negative, key/value MSE equal to a direct computation on the effective tensors, the budget
equal to its parts, and the sign of the HeadQ effect for query_pca."""

import pytest
import torch

from headq_core.config import HeadQConfig, QuantConfig, ValuePolicyConfig
from headq_core.evaluation.metrics import layer_metrics
from headq_core.method.budget import effective_bits
from headq_core.method.headq import (
    QueryStats,
    correction_keys,
    decode_side,
    encode_side,
    logit_correction,
    make_basis,
    query_pca_basis,
)
from headq_core.method.quant import fake_quantize
from headq_core.method.schedule import decode_mask
from headq_core.method.values import mixed_fake_quantize, value_keep_mask
from tests.core.test_headq import anisotropic_queries

B, HQ, HKV, T, D = 1, 4, 2, 16, 8
HEADQ = {"none": None, "qpca+": HeadQConfig(rank=3, side_bits=8),
         "qpca-": HeadQConfig(rank=3, sign=-1, side_bits=16),
         "kpca": HeadQConfig(rank=3, basis="key_pca", side_bits=4),
         "random": HeadQConfig(rank=3, basis="random")}
POLICY = {"none": None, "online": ValuePolicyConfig(mode="online", keep_fraction=0.25),
          "oracle": ValuePolicyConfig(mode="oracle", keep_fraction=None, target_bits=9.0, high_bits=16)}


@pytest.fixture(scope="module")
def layer():
    gen = torch.Generator().manual_seed(0)
    q = anisotropic_queries(gen, B, HQ, T, D)
    k, v = torch.randn(B, HKV, T, D, generator=gen), torch.randn(B, HKV, T, D, generator=gen)
    stats = QueryStats(1, HKV, D)
    stats.update(0, anisotropic_queries(torch.Generator().manual_seed(0), 2, HQ, T, D))
    return q, k, v, stats.second_moment()[0]


def keys_for(q, k, moment, cfg, hq):
    """(effective keys, decode mask, corrected logits) of one key configuration."""
    k_hat, mask = fake_quantize(k, cfg), decode_mask(T, T, cfg)
    if hq is None:
        return k_hat, mask, None
    query_basis = query_pca_basis(moment, hq.rank) if hq.basis == "query_pca" else None
    basis = make_basis(hq, 0, query_basis=query_basis, residual=k - k_hat, kv_heads=HKV, head_dim=D)
    c_hat = decode_side(encode_side(k - k_hat, basis, hq.side_bits))
    tau = D ** -0.5
    logits = tau * q @ k_hat.repeat_interleave(HQ // HKV, 1).transpose(-1, -2)
    logits = logits + logit_correction(q, basis, c_hat, tau, hq.sign, mask)
    return k_hat + correction_keys(basis, c_hat, hq.sign), mask, logits


_BASE: dict = {}


def base_fisher(layer, cfg):
    """fisher of the quantizer without HeadQ (memoised across the matrix)."""
    if cfg not in _BASE:
        q, k, _, _ = layer
        out = layer_metrics(q, k, fake_quantize(k, cfg), D ** -0.5, key_mask=decode_mask(T, T, cfg))
        _BASE[cfg] = out["fisher"]
    return _BASE[cfg]


@pytest.mark.parametrize("policy", list(POLICY))
@pytest.mark.parametrize("variant", list(HEADQ))
@pytest.mark.parametrize("residual", [0, 5])
@pytest.mark.parametrize("axis", ["per_channel", "per_token"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_every_configuration(layer, bits, axis, residual, variant, policy):
    q, k, v, moment = layer
    cfg = QuantConfig(bits=bits, axis=axis, group_size=4, residual=residual)
    hq, pol = HEADQ[variant], POLICY[policy]
    tau = D ** -0.5
    k_eff, k_mask, logits = keys_for(q, k, moment, cfg, hq)
    if logits is not None:  # effective keys give the corrected logits where keys are quantized
        via_keys = tau * q @ k_eff.repeat_interleave(HQ // HKV, 1).transpose(-1, -2)
        torch.testing.assert_close(torch.where(k_mask, via_keys, logits), logits, atol=1e-4, rtol=1e-4)
    v_mask = decode_mask(T, T, cfg)
    if pol is None:
        v_hat, fraction = fake_quantize(v, cfg), None
    else:
        dense = (tau * q @ k.repeat_interleave(HQ // HKV, 1).transpose(-1, -2))
        attn = dense.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        keep = value_keep_mask(attn, HKV, pol, cfg)
        v_hat, fraction = mixed_fake_quantize(v, cfg, keep, pol.high_bits), float(keep.float().mean())
    out = layer_metrics(q, k, k_eff, tau, key_mask=k_mask, v=v, v_hat=v_hat, value_mask=v_mask)
    for name, val in out.items():
        assert torch.isfinite(val).all() and (val >= 0).all(), name
    want_k = (k_eff - k).double().square().mean((0, 2, 3)).repeat_interleave(HQ // HKV)
    torch.testing.assert_close(out["key_mse"], want_k)
    want_v = (v_hat - v).double().square().mean((0, 2, 3)).repeat_interleave(HQ // HKV)
    torch.testing.assert_close(out["value_mse"], want_v)
    side = 0.0 if hq is None else (-(-hq.rank * hq.side_bits // 8) * 8 + 16 * (hq.side_bits < 16)) / D
    assert effective_bits(cfg, D, hq) == pytest.approx(-(-D * bits // 8) * 8 / D + 32 / 4 + side)
    if pol is not None:
        low, high = effective_bits(cfg, D), effective_bits(cfg, D, policy=pol, fraction=1.0)
        mixed = effective_bits(cfg, D, policy=pol, fraction=fraction)
        assert mixed == pytest.approx(fraction * high + (1 - fraction) * low)
    if variant in ("qpca+", "qpca-"):
        base = base_fisher(layer, cfg)
        if variant == "qpca+":
            assert (out["fisher"] <= base * 1.01 + 1e-9).all()
        else:
            assert (out["fisher"] >= base * 0.99).all()
