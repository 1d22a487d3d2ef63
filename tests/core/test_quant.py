"""Quantizer numerics against a loop-by-loop reference, residual tail, packing, bad input."""

import pytest
import torch

from headq_core.config import QuantConfig
from headq_core.method.quant import dequantize, fake_quantize, quantize
from headq_core.method.schedule import quantized_count


def reference(x, cfg):
    """Group by group with explicit loops (contracts.md numerics); tail tokens unchanged."""
    out = x.clone()
    seq, d = x.shape[-2:]
    nq = quantized_count(seq, cfg)
    levels = 2 ** cfg.bits - 1
    g = cfg.group_size
    flat_in = x.reshape(-1, seq, d)
    flat_out = out.reshape(-1, seq, d)
    for r in range(flat_in.shape[0]):
        groups = []
        if cfg.axis == "per_channel":
            for t0 in range(0, nq, g):
                for c in range(d):
                    groups.append((slice(t0, t0 + g), slice(c, c + 1)))
        else:
            for t in range(nq):
                for c0 in range(0, d, g):
                    groups.append((slice(t, t + 1), slice(c0, c0 + g)))
        for ts, cs in groups:
            vals = flat_in[r, ts, cs].float()
            lo, hi = vals.min(), vals.max()
            scale = ((hi - lo) / levels).half().float()
            if scale == 0:
                scale = torch.tensor(1.0)
            zero = lo.half().float()
            codes = torch.clamp(torch.round((vals - zero) / scale), 0, levels)
            flat_out[r, ts, cs] = codes * scale + zero
    return out


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize(("axis", "group_size"), [("per_channel", 4), ("per_token", 8), ("per_token", 16)])
@pytest.mark.parametrize("residual", [0, 5])
def test_matches_reference(bits, axis, group_size, residual):
    cfg = QuantConfig(bits=bits, axis=axis, group_size=group_size, residual=residual)
    x = torch.randn(2, 2, 19, 16, generator=torch.Generator().manual_seed(bits))
    got = fake_quantize(x, cfg)
    assert torch.equal(got, reference(x, cfg))
    nq = quantized_count(19, cfg)
    assert torch.equal(got[..., nq:, :], x[..., nq:, :])
    if nq:
        err = (got - x)[..., :nq, :].abs()
        assert err.max() > 0
        # error within half a step of the (fp16) range per group, crude bound over the tensor
        step = (x.max() - x.min()) / (2 ** bits - 1)
        assert err.max() <= step * 0.5 + 1e-2


def test_packed_storage_is_bit_packed():
    cfg = QuantConfig(bits=3, axis="per_channel", group_size=8, residual=0)
    p = quantize(torch.randn(1, 2, 32, 64), cfg)
    assert p.codes.dtype == torch.uint8 and p.codes.shape == (1, 2, 32, 24)
    assert p.scale.dtype == torch.float16 and p.scale.shape == (1, 2, 4, 64)
    assert p.zero.dtype == torch.float16
    assert dequantize(p).shape == (1, 2, 32, 64)


def test_constant_group_and_dtype():
    cfg = QuantConfig(bits=2, axis="per_token", group_size=4)
    x = torch.full((1, 1, 3, 8), 0.75, dtype=torch.float16)
    p = quantize(x, cfg)
    assert torch.all(p.scale == 1)
    y = dequantize(p)
    assert y.dtype == torch.float16 and torch.equal(y, x)


def test_explicit_n_quant_and_errors():
    cfg = QuantConfig(bits=2, axis="per_channel", group_size=8)
    x = torch.randn(1, 1, 24, 8)
    assert quantize(x, cfg, n_quant=16).n_quant == 16
    with pytest.raises(ValueError, match="group_size"):
        quantize(x, cfg, n_quant=12)
    with pytest.raises(ValueError, match="group_size"):
        quantize(x, QuantConfig(bits=2, axis="per_token", group_size=3))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x"):
        quantize(bad, cfg)
    with pytest.raises(ValueError, match="x"):
        quantize(x * 1e6, cfg)
    with pytest.raises(ValueError, match="bits"):
        QuantConfig(bits=9)
    with pytest.raises(ValueError, match="bits"):
        QuantConfig(bits=0)


@pytest.mark.parametrize("cfg", [QuantConfig(bits=2, group_size=32),
                                 QuantConfig(bits=3, axis="per_token", group_size=16, residual=16)])
def test_nothing_quantized_yet_round_trips_exactly(cfg):
    """Fewer tokens than one complete group (or all inside the residual window): all stay exact."""
    x = torch.randn(1, 2, 10, 64)
    packed = quantize(x, cfg)
    assert packed.codes.shape[-2] == 0
    assert torch.equal(dequantize(packed), x)
    assert torch.equal(fake_quantize(x, cfg), x)
