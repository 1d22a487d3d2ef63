"""Randomised Hadamard rotation: orthogonal (checked against scipy's Hadamard matrix), logits unchanged,
outlier channels spread out, and combinable with every quantizer as ``Hᵀ Q(H x)``."""

from dataclasses import replace

import pytest
import scipy.linalg
import torch

from headq_core.config import QuantConfig
from headq_core.method.budget import effective_bits
from headq_core.method.quant import fake_quantize, quantize
from headq_core.method.rotation import hadamard_matrix, rotate, sylvester, unrotate

FORMATS = [
    QuantConfig(bits=2, axis="per_channel", group_size=4),
    QuantConfig(bits=3, axis="per_token", group_size=32, symmetric=True),
    QuantConfig(format="fp8_e4m3", bits=8, axis="per_token", fp8_scale="token"),
    QuantConfig(format="fp8_e5m2", bits=8, axis="per_token"),
    QuantConfig(format="q4_0", bits=4, axis="per_token"),
    QuantConfig(format="q5_1", bits=5, axis="per_token"),
    QuantConfig(format="iq4_nl", bits=4, axis="per_token"),
]


def _outlier_keys(seed=0, d=64):
    """Keys [2, 2, 16, d] with three planted outlier channels (20x the others)."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(2, 2, 16, d, generator=gen)
    k[..., [3, 17, 40]] *= 20
    return k


def test_hadamard_is_orthogonal_and_seeded():
    for d in (1, 2, 8, 64, 128):
        assert torch.equal(sylvester(d), torch.from_numpy(scipy.linalg.hadamard(d)).double())
        h = hadamard_matrix(d, seed=3)
        assert torch.allclose(h @ h.T, torch.eye(d, dtype=torch.float64), atol=1e-12)
    assert torch.equal(hadamard_matrix(64, 5), hadamard_matrix(64, 5))
    assert not torch.equal(hadamard_matrix(64, 5), hadamard_matrix(64, 6))
    with pytest.raises(ValueError, match="rotation: a Hadamard rotation needs a power-of-two head_dim"):
        hadamard_matrix(48, 0)


def test_rotation_leaves_logits_unchanged():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 2, 16, 64, generator=gen), _outlier_keys()
    h = hadamard_matrix(64, seed=7)
    dense = q @ k.transpose(-1, -2)
    rotated = rotate(q, h) @ rotate(k, h).transpose(-1, -2)
    assert (rotated - dense).abs().max() <= 1e-5 * dense.abs().max()
    assert (unrotate(rotate(k, h), h) - k).abs().max() <= 1e-5 * k.abs().max()


def test_rotation_shrinks_planted_outliers_and_their_quantization_error():
    k = _outlier_keys()
    h = hadamard_matrix(64, seed=0)
    assert rotate(k, h).abs().max() < 0.5 * k.abs().max()
    plain = QuantConfig(bits=2, axis="per_token", group_size=64)
    rotated = QuantConfig(bits=2, axis="per_token", group_size=64, rotation="hadamard")
    err_plain = (fake_quantize(k, plain) - k).norm()
    err_rotated = (fake_quantize(k, rotated) - k).norm()
    assert err_rotated < 0.6 * err_plain


@pytest.mark.parametrize("cfg", FORMATS, ids=lambda c: f"{c.format}-{c.axis}-{c.bits}")
def test_rotation_combines_with_every_quantizer(cfg):
    k, q = _outlier_keys(2), torch.randn(2, 2, 16, 64)
    rot = replace(cfg, rotation="hadamard", rotation_seed=11, residual=4)
    h = hadamard_matrix(64, seed=11)
    n = 12  # the decode rule: 16 tokens, 4 in the residual window (per_channel groups of 4: 12 too)
    head = unrotate(fake_quantize(rotate(k[..., :n, :], h), replace(cfg, residual=0)), h)
    got = fake_quantize(k, rot)
    assert torch.equal(got[..., n:, :], k[..., n:, :])
    assert torch.equal(got[..., :n, :], head)
    # the logits of the un-rotated read equal those of the rotated query on the rotated cache
    stored = fake_quantize(rotate(k[..., :n, :], h), replace(cfg, residual=0))
    direct = rotate(q, h) @ stored.transpose(-1, -2)
    assert torch.allclose(q @ got[..., :n, :].transpose(-1, -2), direct, atol=1e-4, rtol=1e-5)
    assert effective_bits(rot, 64) == effective_bits(replace(cfg, rotation="none"), 64)  # no stored bits


def test_rotation_errors_name_the_field():
    cfg = QuantConfig(bits=2, axis="per_token", group_size=8, rotation="hadamard")
    with pytest.raises(ValueError, match="rotation: a Hadamard rotation needs a power-of-two head_dim"):
        fake_quantize(torch.randn(4, 24), cfg)
    with pytest.raises(ValueError, match="rotation: a Hadamard rotation needs a power-of-two head_dim"):
        effective_bits(cfg, 24)
    with pytest.raises(ValueError, match="rotation: packed codes hold the 'int' format without a rotation"):
        quantize(torch.randn(4, 16), cfg)
