"""Dense-and-sparse outliers (``outliers``, KVQuant): the kept elements read back as their fp16
values, the rest as a direct asymmetric quantizer of the inliers reads them, planted outliers no
longer spoil the scales, the effective bits, the spec rules, and fraction 0 is today's path."""

import json
import math

import pytest
import torch

from headq_core.config import QuantConfig, RunSpec
from headq_core.method.budget import effective_bits
from headq_core.method.outliers import outlier_mask
from headq_core.method.quant import fake_quantize, quantize
from headq_spec.jobs import JobSpec

KEYS = QuantConfig(bits=2, axis="per_channel", group_size=8, outliers=0.01)
VALUES = QuantConfig(bits=2, axis="per_token", group_size=16, outliers=0.05)


def _planted(seed=0, n=32, d=64):
    """Gaussian keys [2, 3, n, d] with large outliers planted in a few random places."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, n, d, generator=gen)
    flat = x.view(-1)
    where = torch.randperm(flat.numel(), generator=gen)[: flat.numel() // 200]
    flat[where] = 40.0 * torch.sign(torch.randn(len(where), generator=gen))
    return x


@pytest.mark.parametrize("cfg", [KEYS, VALUES], ids=["per_channel", "per_token"])
def test_the_largest_magnitudes_of_each_token_group_read_back_in_fp16(cfg):
    x = _planted()
    mask = outlier_mask(x, cfg)
    out = fake_quantize(x, cfg)
    assert torch.equal(out[mask], x.half().float()[mask])
    tokens = cfg.seq_group
    groups = x.abs().reshape(2, 3, 32 // tokens, tokens * 64)
    kept = mask.reshape(groups.shape)
    count = math.ceil(cfg.outliers * tokens * 64)
    assert (kept.sum(-1) == count).all()
    # every kept magnitude is at least every other one of its group
    assert (groups.masked_fill(~kept, math.inf).amin(-1) >= groups.masked_fill(kept, -1).amax(-1)).all()


def test_the_inliers_read_as_a_direct_quantizer_of_their_own_range():
    """per_token, groups of 4 channels, 2 bits: the outlier's group is quantized with fp16 scale
    ``(hi - lo) / 3`` and zero ``lo`` of its inliers (the outlier replaced by 0 clipped into
    [lo, hi]), as the asymmetric formula of docs/contracts.md says."""
    x = torch.tensor([[[[0.5, -1.0, 90.0, 0.25, 1.0, 2.0, 3.0, 4.0]]]])
    cfg = QuantConfig(bits=2, axis="per_token", group_size=4, outliers=0.1)  # ceil(0.8) = 1 of 8
    out = fake_quantize(x, cfg)[0, 0, 0]
    assert out[2].item() == 90.0

    def direct(group):
        lo, hi = group.min(), group.max()
        scale, zero = ((hi - lo) / 3).half().float(), lo.half().float()
        return torch.round((group - zero) / scale).clamp(0, 3) * scale + zero

    assert torch.equal(out[[0, 1, 3]], direct(torch.tensor([0.5, -1.0, 0.0, 0.25]))[[0, 1, 3]])
    assert torch.equal(out[4:], direct(x[0, 0, 0, 4:]))
    assert outlier_mask(x, cfg).sum() == 1


@pytest.mark.parametrize("cfg", [KEYS, VALUES], ids=["per_channel", "per_token"])
def test_planted_outliers_no_longer_spoil_the_scales(cfg):
    x = _planted(1)
    plain = QuantConfig(bits=cfg.bits, axis=cfg.axis, group_size=cfg.group_size)
    mask = outlier_mask(x, cfg)
    err, err_plain = (fake_quantize(x, cfg) - x) ** 2, (fake_quantize(x, plain) - x) ** 2
    assert err[~mask].mean() <= err_plain[~mask].mean()
    assert err.mean() < 0.5 * err_plain.mean()


def test_fraction_zero_is_todays_path_and_packed_codes_refuse_outliers():
    x = _planted(2)
    for axis in ("per_channel", "per_token"):
        cfg = QuantConfig(bits=3, axis=axis, group_size=8, outliers=0.0)
        assert cfg == QuantConfig(bits=3, axis=axis, group_size=8) and cfg.is_plain
        today = QuantConfig(bits=3, axis=axis, group_size=8)
        assert torch.equal(fake_quantize(x, cfg), fake_quantize(x, today))
    assert not KEYS.is_plain
    with pytest.raises(ValueError, match="outliers: packed codes hold"):
        quantize(x, KEYS)


def test_outliers_with_a_rotation_and_a_residual_window():
    x = _planted(3)
    cfg = QuantConfig(bits=2, axis="per_channel", group_size=8, residual=5, outliers=0.02,
                      rotation="hadamard", rotation_seed=1)
    out = fake_quantize(x, cfg)
    assert torch.equal(out[..., 24:, :], x[..., 24:, :])  # 32 - 5 = 27 -> 3 groups of 8 quantized
    plain = QuantConfig(bits=2, axis="per_channel", group_size=8, residual=5, rotation="hadamard",
                        rotation_seed=1)
    assert ((out - x) ** 2).mean() < ((fake_quantize(x, plain) - x) ** 2).mean()


def test_effective_bits_count_an_fp16_value_and_a_16_bit_index_per_outlier():
    # per_channel G=8, d=64: ceil(0.01 * 512) = 6 outliers per token group of 512 elements
    assert effective_bits(KEYS, 64) == pytest.approx(2 + 32 / 8 + 6 * 32 / 512)
    # per_token, d=64: ceil(0.05 * 64) = 4 per token
    assert effective_bits(VALUES, 64) == pytest.approx(2 + 32 / 16 + 4 * 32 / 64)
    kivi = QuantConfig(bits=2, axis="per_channel", group_size=32, outliers=0.01)
    assert effective_bits(kivi, 64) == pytest.approx(3 + 21 * 32 / 2048)  # ~ 0.01 * 32 = 0.32 bits
    assert effective_bits(QuantConfig(bits=2, axis="per_channel", group_size=32, outliers=0.0), 64) == 3.0


@pytest.mark.parametrize("value", [True, "0.01", -0.01, 0.2, math.nan, math.inf, None])
def test_bad_outlier_shares_name_the_field(value):
    with pytest.raises(ValueError, match="outliers: must be a number in \\[0, 0.1\\]"):
        QuantConfig(outliers=value)


def test_outliers_are_for_the_int_format_and_round_trip():
    with pytest.raises(ValueError, match="outliers: only for the 'int' format"):
        QuantConfig(format="q4_0", bits=4, axis="per_token", outliers=0.01)
    run = RunSpec("kivi2+outliers1%", key=KEYS, value=VALUES)
    data = run.to_dict()
    assert data["key"]["outliers"] == 0.01 and RunSpec.from_dict(json.loads(json.dumps(data))) == run
    assert "outliers" not in RunSpec("k", key=QuantConfig()).to_dict()["key"]
    job = {"kind": "evaluation", "model": {"id": "org/m"}, "runs": [data]}
    assert JobSpec.model_validate(job).runs[0] == run
    with pytest.raises(ValueError, match="0.key.outliers: must be of type float"):
        JobSpec.model_validate({**job, "runs": [{**data, "key": {**data["key"], "outliers": "0.01"}}]})
