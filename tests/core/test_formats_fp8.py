"""FP8 caches against torch's own float8 casts, and symmetric int codes against a direct formula."""

import pytest
import torch

from headq_core.config import QuantConfig
from headq_core.method.budget import effective_bits
from headq_core.method.quant import dequantize, fake_quantize, quantize

DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def _keys(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 10, 16, generator=gen) * torch.rand(2, 3, 10, 1, generator=gen) * 4
    x[0, 1, 4] = 0  # an all-zero token: scale 1
    x[1, 2] = 0  # an all-zero head
    return x


def _cfg(name, scope):
    return QuantConfig(format=name, bits=8, axis="per_token", fp8_scale=scope)


@pytest.mark.parametrize("name", list(DTYPES))
def test_unit_scale_is_torchs_cast(name):
    x = _keys()
    assert torch.equal(fake_quantize(x, _cfg(name, "unit")), x.to(DTYPES[name]).float())


@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize(("scope", "dims"), [("tensor", (1, 2, 3)), ("head", (2, 3)), ("token", (3,))])
def test_dynamic_scales_against_torch_casts(name, scope, dims):
    x = _keys()
    top = torch.finfo(DTYPES[name]).max
    amax = x.abs().amax(dim=dims, keepdim=True)
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / top)
    want = (x / scale).to(DTYPES[name]).float() * scale
    got = fake_quantize(x, _cfg(name, scope))
    assert torch.equal(got, want)
    assert got.abs().amax() <= x.abs().amax() * (1 + 1e-6)


def test_saturating_cast_and_decode_rule():
    x = torch.tensor([[1000.0, -1000.0, 3.0, 0.5]])
    got = fake_quantize(x, _cfg("fp8_e4m3", "unit"))
    assert got.tolist() == [[448.0, -448.0, 3.0, 0.5]]  # torch's own cast would give NaN
    y = _keys()
    windowed = QuantConfig(format="fp8_e5m2", bits=8, axis="per_token", residual=4)
    out = fake_quantize(y, windowed)
    assert torch.equal(out[..., 6:, :], y[..., 6:, :])
    assert torch.equal(out[..., :6, :], fake_quantize(y[..., :6, :], _cfg("fp8_e5m2", "tensor")))


def test_fp8_effective_bits():
    for scope in ("tensor", "head", "unit"):
        assert effective_bits(_cfg("fp8_e4m3", scope), 64) == 8.0
    assert effective_bits(_cfg("fp8_e5m2", "token"), 64) == 8.5  # + a float32 scale per token
    assert effective_bits(_cfg("fp8_e4m3", "token"), 128) == 8.25


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("axis", ["per_token", "per_channel"])
def test_symmetric_int_codes_against_direct_formula(bits, axis):
    x = _keys(1)[..., :8, :]
    cfg = QuantConfig(bits=bits, axis=axis, group_size=8, symmetric=True)
    qmax = 2 ** (bits - 1) - 1
    groups = x.reshape(2, 3, 8, 2, 8) if axis == "per_token" else x.reshape(2, 3, 1, 8, 16)
    dim = -1 if axis == "per_token" else -2
    scale = (groups.abs().amax(dim, keepdim=True) / qmax).half().float()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    want = (torch.round(groups / scale).clamp(-qmax, qmax) * scale).reshape(x.shape)
    packed = quantize(x, cfg)
    assert torch.equal(dequantize(packed), want)  # the same Packed holds them, bit for bit
    assert torch.equal(fake_quantize(x, cfg), want)
    assert effective_bits(cfg, 16) == pytest.approx(bits + 16 / 8)  # scale only, no zero-point
    assert effective_bits(QuantConfig(bits=bits, axis=axis, group_size=8), 16) == pytest.approx(bits + 32 / 8)


def test_symmetric_fp16_overflow_is_refused():
    with pytest.raises(ValueError, match="x: values exceed the fp16 range"):
        quantize(torch.full((1, 4), 65500.0),
                 QuantConfig(bits=8, axis="per_token", group_size=4, symmetric=True))
