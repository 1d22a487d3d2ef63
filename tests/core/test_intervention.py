"""Null-space intervention: same per-token error norm, in / out of the query subspace, and the
paper's control: equal key_mse, very different attn_kl."""

import pytest
import torch

from headq_core.config import InterventionConfig, QuantConfig
from headq_core.evaluation.metrics import layer_metrics
from headq_core.method.headq import QueryStats, query_pca_basis
from headq_core.method.intervention import perturb_keys
from headq_core.method.quant import fake_quantize
from tests.core.test_headq import anisotropic_queries


def test_norms_and_subspaces():
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(2, 2, 12, 8, generator=gen)
    k_hat = fake_quantize(k, QuantConfig(bits=2, axis="per_channel", group_size=4, residual=4))
    basis, _ = torch.linalg.qr(torch.randn(2, 8, 8, generator=gen))
    for subspace in ("outside", "inside"):
        cfg = InterventionConfig(subspace=subspace, dims=3, seed=1)
        kp = perturb_keys(k, k_hat, basis, cfg)
        n = kp - k
        torch.testing.assert_close(n.norm(dim=-1), (k_hat - k).norm(dim=-1), rtol=1e-5, atol=1e-6)
        assert torch.equal(n[..., 8:, :], torch.zeros_like(n[..., 8:, :]))  # residual tokens untouched
        coords = torch.einsum("bhsd,hdm->bhsm", n, basis[..., :3])
        if subspace == "outside":
            assert coords.abs().max() < 1e-5
        else:
            torch.testing.assert_close(coords.norm(dim=-1), n.norm(dim=-1), rtol=1e-5, atol=1e-6)
        assert torch.equal(kp, perturb_keys(k, k_hat, basis, cfg))  # seeded


def test_same_key_mse_very_different_kl():
    gen = torch.Generator().manual_seed(1)
    b, hq, hkv, t, d = 1, 4, 2, 64, 16
    q = anisotropic_queries(gen, b, hq, t, d)
    stats = QueryStats(1, hkv, d)
    stats.update(0, q)
    basis = query_pca_basis(stats.second_moment()[0], 4)
    k = torch.randn(b, hkv, t, d, generator=gen)
    k_hat = fake_quantize(k, QuantConfig(bits=2, axis="per_channel", group_size=16))
    res = {}
    for subspace in ("outside", "inside"):
        kp = perturb_keys(k, k_hat, basis, InterventionConfig(subspace=subspace, dims=4))
        res[subspace] = layer_metrics(q, k, kp, d ** -0.5)
    torch.testing.assert_close(res["outside"]["key_mse"], res["inside"]["key_mse"], rtol=1e-5, atol=0)
    assert (res["inside"]["attn_kl"] > 20 * res["outside"]["attn_kl"]).all()


def test_errors():
    k = torch.zeros(1, 2, 4, 8)
    basis = torch.eye(8)[:, :3].expand(2, 8, 3)
    with pytest.raises(ValueError, match="dims"):
        perturb_keys(k, k, basis, InterventionConfig(dims=4))
    with pytest.raises(ValueError, match="dims"):
        perturb_keys(k, k, torch.eye(8).expand(2, 8, 8), InterventionConfig(dims=8))
    with pytest.raises(ValueError, match="k_hat"):
        perturb_keys(k, k[..., :2, :], basis, InterventionConfig(dims=2))
