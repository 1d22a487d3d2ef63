"""HeadQ side-code storage options: 2/4/8-bit codes with per-token or per-key-group scales, against
direct float64 computations; the 2-bit packing layout; the budget; the evaluator's group-mode logits."""

import pytest
import torch

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.run_attention import RunAttention
from headq_core.method.budget import effective_bits, side_code_bits
from headq_core.method.headq import decode_side, encode_side, random_basis
from headq_core.method.quant import fake_quantize
from headq_core.method.schedule import decode_mask
from headq_core.models.attention import AttentionCall


def _codes64(residual, basis):
    """c = U^T r in float64 [B, Hkv, S, r], by explicit sums over d."""
    r64, u64 = residual.double(), basis.double()
    b, h, s, d = r64.shape
    c = torch.zeros(b, h, s, u64.shape[-1], dtype=torch.float64)
    for i in range(d):
        c += r64[..., i, None] * u64[None, :, None, i, :]
    return c


def _case(seed, s=12):
    gen = torch.Generator().manual_seed(seed)
    residual = torch.randn(2, 2, s, 8, generator=gen) * 0.1
    residual[0, 0, :4] = 0  # an all-zero group / zero tokens get step 1
    return residual, random_basis(2, 8, 5, seed=seed)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_token_round_trip_within_half_a_step(bits):
    residual, basis = _case(bits)
    side = encode_side(residual, basis, bits, group_size=7)  # token scales ignore group_size
    c, got = _codes64(residual, basis), decode_side(side).double()
    qmax = 2 ** (bits - 1) - 1
    exact = c.abs().amax(-1) / qmax
    scale = side.scale.double()
    assert torch.equal(scale[exact > 0], exact.half().double()[exact > 0]) and (scale[exact == 0] == 1).all()
    bound = scale / 2 + qmax * (exact - scale).clamp(min=0) + 1e-6  # + fp16 rounding of the scale
    assert ((c - got).abs() <= bound.unsqueeze(-1)).all()
    levels = torch.round(got / scale.unsqueeze(-1))
    assert levels.abs().max() <= qmax and torch.equal(levels * scale.unsqueeze(-1), got)
    assert side.group_size is None and side.scale.shape == (2, 2, 12)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_group_round_trip_within_half_a_step(bits):
    residual, basis = _case(10 + bits)
    side = encode_side(residual, basis, bits, scale="group", group_size=4)
    c, got = _codes64(residual, basis), decode_side(side).double()
    levels = 2 ** bits - 1
    assert side.group_size == 4 and side.scale.dtype == torch.float16 and side.scale.shape == (2, 2, 2, 5, 3)
    assert side.codes.shape == (2, 2, 12, -(-5 * bits // 8))
    for b in range(2):
        for h in range(2):
            for g in range(3):
                for i in range(5):
                    col = c[b, h, 4 * g: 4 * g + 4, i]
                    lo, hi = float(col.min()), float(col.max())
                    exact = (hi - lo) / levels
                    step, offset = float(side.step[b, h, g, i]), float(side.offset[b, h, g, i])
                    assert offset == float(torch.tensor(lo).half())
                    assert step == (float(torch.tensor(exact).half()) if exact > 0 else 1.0)
                    # half a step, plus the fp16 rounding of the minimum and the step
                    bound = step / 2 + abs(offset - lo) + levels * abs(exact - step) * (exact > 0) + 1e-6
                    err = (col - got[b, h, 4 * g: 4 * g + 4, i]).abs()
                    assert (err <= bound).all(), (err, bound)
                    codes = torch.round((got[b, h, 4 * g: 4 * g + 4, i] - offset) / step)
                    assert codes.min() >= 0 and codes.max() <= levels
    assert float(side.step[0, 0, 0].max()) == 1.0  # the zero group


def test_two_bit_packing_layout():
    basis = torch.eye(8)[:, :4].expand(1, 8, 4).contiguous()  # c = the first 4 residual channels
    token = torch.zeros(1, 1, 1, 8)
    token[0, 0, 0, :4] = torch.tensor([0.5, -0.5, 0.0, 0.5])
    side = encode_side(token, basis, 2)
    # levels {+1, -1, 0, +1} -> two's complement 2-bit {1, 3, 0, 1}, little-endian in one byte
    assert side.codes.dtype == torch.uint8 and side.codes.tolist() == [[[[1 | 3 << 2 | 0 << 4 | 1 << 6]]]]
    assert float(side.scale) == 0.5 and decode_side(side).tolist() == [[[[0.5, -0.5, 0.0, 0.5]]]]
    group = torch.zeros(1, 1, 4, 8)
    for t in range(4):
        group[0, 0, t, :4] = torch.tensor([float((t + i) % 4) for i in range(4)])
    side = encode_side(group, basis, 2, scale="group", group_size=4)
    # every component spans 0..3: step 1, minimum 0, codes = the values themselves
    assert side.step.tolist() == [[[[1.0] * 4]]] and side.offset.tolist() == [[[[0.0] * 4]]]
    assert side.codes.flatten().tolist() == [0 | 1 << 2 | 2 << 4 | 3 << 6, 1 | 2 << 2 | 3 << 4 | 0 << 6,
                                             2 | 3 << 2 | 0 << 4 | 1 << 6, 3 | 0 << 2 | 1 << 4 | 2 << 6]
    assert torch.equal(decode_side(side), group[..., :4])


def test_encode_errors():
    residual, basis = _case(0)
    with pytest.raises(ValueError, match="side_bits"):
        encode_side(residual, basis, 3)
    with pytest.raises(ValueError, match="side_scale"):
        encode_side(residual, basis, 4, scale="row")
    with pytest.raises(ValueError, match="side_scale"):
        encode_side(residual, basis, 16, scale="group", group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        encode_side(residual, basis, 4, scale="group")
    with pytest.raises(ValueError, match="group_size: 5 must divide the 12"):
        encode_side(residual, basis, 4, scale="group", group_size=5)
    with pytest.raises(ValueError, match="side_scale"):
        _ = encode_side(residual, basis, 4).step


def test_budget_hand_counts():
    k2 = QuantConfig(bits=2, axis="per_channel", group_size=32)
    group2 = HeadQConfig(rank=8, side_bits=2, side_scale="group")
    # 8 codes x 2 bits / 64 + (fp16 step + fp16 minimum) x 8 components / (32 tokens x 64)
    assert side_code_bits(group2, 64, 32) == pytest.approx(0.25 + 0.125)
    assert effective_bits(k2, 64, group2) == pytest.approx(3.0 + 0.375)
    # token scales: (2 bytes of codes + a 16-bit scale) / 64
    assert side_code_bits(HeadQConfig(rank=8, side_bits=2), 64) == pytest.approx(32 / 64)
    # r=8 at 4 bits, G=128, d=128: 32/128 + 256/16384
    assert side_code_bits(HeadQConfig(rank=8, side_bits=4, side_scale="group"), 128, 128) == pytest.approx(
        0.25 + 0.015625)
    with pytest.raises(ValueError, match="group_size"):
        side_code_bits(group2, 64)
    with pytest.raises(ValueError, match="headq.side_scale"):
        effective_bits(QuantConfig(axis="per_token", group_size=32), 64, group2)


def test_evaluator_group_logits_equal_a_direct_loop():
    """11 tokens, key groups of 4, residual 1: 8 tokens quantized, the last 3 (incomplete group and
    window) never read quantized; the logits of the run against explicit sums."""
    gen = torch.Generator().manual_seed(5)
    b, hq, hkv, n, d, r, tau = 1, 4, 2, 11, 8, 3, 0.3
    q, k, v = (torch.randn(b, h, n, d, generator=gen) for h in (hq, hkv, hkv))
    key = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=1)
    hq_cfg = HeadQConfig(rank=r, side_bits=2, side_scale="group", sign=-1)
    basis = random_basis(hkv, d, r, seed=3)
    views = []
    run = RunAttention(RunSpec("g", key=key, headq=hq_cfg), basis_for=lambda layer, rank: basis,
                       sink=views.append)
    run(AttentionCall(layer=0, query=q, key=k, value=v, mask=None, scaling=tau))
    got = views[0].raw.double()

    k_hat = fake_quantize(k, key).double()
    c = _codes64((k - fake_quantize(k, key))[:, :, :8], basis)
    c_hat = torch.zeros(b, hkv, n, r, dtype=torch.float64)
    for h in range(hkv):
        for g in range(2):
            for i in range(r):
                col = c[0, h, 4 * g: 4 * g + 4, i]
                lo = float(torch.tensor(float(col.min())).half())
                step = float(torch.tensor((float(col.max()) - float(col.min())) / 3).half())
                for j in range(4):
                    code = min(3, max(0, round((float(col[j]) - lo) / step)))
                    c_hat[0, h, 4 * g + j, i] = code * step + lo
    mask = decode_mask(n, n, key)
    u = basis.double()
    for h in range(hq):
        kv = h // 2
        for t in range(n):
            for j in range(n):
                if mask[t, j]:
                    qu = u[kv].T @ q[0, h, t].double()
                    want = tau * float(q[0, h, t].double() @ k_hat[0, kv, j] - qu @ c_hat[0, kv, j])
                else:
                    want = tau * float(q[0, h, t].double() @ k[0, kv, j].double())
                assert abs(float(got[0, h, t, j]) - want) < 1e-5
    assert mask[:, 8:].sum() == 0 and mask.any()
