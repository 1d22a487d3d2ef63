"""Effective bits against hand counts."""

import pytest

from headq_core.config import HeadQConfig, QuantConfig, ValuePolicyConfig
from headq_core.method.budget import effective_bits


def test_hand_counts():
    d = 128
    k2 = QuantConfig(bits=2, axis="per_channel", group_size=32)
    # 2 bits + (16 scale + 16 zero) / 32 tokens = 3.0
    assert effective_bits(k2, d) == pytest.approx(3.0)
    assert effective_bits(None, d) == 16.0
    # side code r=8 at 8 bits: 64 bits + 16-bit scale per token over 128 elements = 0.625
    assert effective_bits(k2, d, HeadQConfig(rank=8, side_bits=8)) == pytest.approx(3.625)
    # r=8 at 16 bits: 128 / 128 = 1
    assert effective_bits(k2, d, HeadQConfig(rank=8, side_bits=16)) == pytest.approx(4.0)
    # r=3 at 4 bits: 12 bits -> 2 bytes = 16 bits, + 16 scale = 32 / 128
    assert effective_bits(k2, d, HeadQConfig(rank=3, side_bits=4)) == pytest.approx(3.25)
    # 3 bits, head_dim 20: 60 bits -> 8 bytes = 64 bits per 20 elements, + 32/4
    v3 = QuantConfig(bits=3, axis="per_token", group_size=4)
    assert effective_bits(v3, 20) == pytest.approx(64 / 20 + 8)


def test_value_policy_mix():
    v2 = QuantConfig(bits=2, axis="per_token", group_size=32)
    pol = ValuePolicyConfig(keep_fraction=0.25, high_bits=8)
    # 0.25 * (8 + 1) + 0.75 * (2 + 1)
    assert effective_bits(v2, 128, policy=pol) == pytest.approx(4.5)
    assert effective_bits(v2, 128, policy=pol, fraction=0.5) == pytest.approx(6.0)
    fp = ValuePolicyConfig(keep_fraction=0.5, high_bits=16)
    assert effective_bits(v2, 128, policy=fp) == pytest.approx(0.5 * 16 + 0.5 * 3)
    tb = ValuePolicyConfig(keep_fraction=None, target_bits=3.0, high_bits=8)
    assert effective_bits(v2, 128, policy=tb) == pytest.approx(1 / 6 * 9 + 5 / 6 * 3)


def test_residual_window_counted_with_seq_len():
    k = QuantConfig(bits=4, axis="per_channel", group_size=32, residual=16)
    # 100 tokens: 64 quantized at 4 + 1 bits, 36 at 16
    assert effective_bits(k, 64, seq_len=100) == pytest.approx((64 * 5 + 36 * 16) / 100)


def test_errors():
    with pytest.raises(ValueError, match="head_dim"):
        effective_bits(QuantConfig(), 0)
    with pytest.raises(ValueError, match="group_size"):
        effective_bits(QuantConfig(axis="per_token", group_size=48), 64)
    with pytest.raises(ValueError, match="fraction"):
        effective_bits(QuantConfig(), 64, fraction=0.2)
