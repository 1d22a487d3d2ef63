"""Non-uniform codebooks (``codebook="nuq"``, KVQuant): k-means levels near the modes of known data,
pinned endpoints and determinism; the read-back against a brute-force nearest-level reference; lower
MSE than uniform codes at 2 bits on calibration-like data; uniform levels reproduce the uniform
quantizer; spec rules; calibration artifacts with and without codebooks."""

import json

import pytest
import torch

from app.dashboard.job_form import build_spec
from headq_cli.presets import preset_runs
from headq_core.config import NUQ_BITS, QuantConfig, RunSpec
from headq_core.evaluation.calibrate import Calibration
from headq_core.method.budget import effective_bits
from headq_core.method.codebook import (
    calibration_config,
    learn_codebook,
    normalised,
    read_nuq,
    sample_normalised,
    uniform_levels,
)
from headq_core.method.groups import grouped, ungrouped
from headq_core.method.quant import fake_quantize, quantize
from headq_core.runtime.cache import make_side
from headq_core.runtime.format_side import FormatSide
from headq_spec.artifact import CODEBOOKS, META_NAME, TENSORS_NAME
from headq_spec.jobs import JobSpec
from headq_spec.runs import check_run_list
from studies.formats import format_label, format_runs
from tests.app.artifactgen import make_artifact, safetensors_bytes, tar_of
from tests.dashboard.test_job_form import FORM


def _nuq(bits=2, axis="per_channel", group=16, **kw):
    return QuantConfig(bits=bits, axis=axis, group_size=group, codebook="nuq", **kw)


def _bimodal(n=20000, seed=0):
    """Values in [0, 1] from two narrow modes at 0.3 and 0.7 plus the endpoints."""
    gen = torch.Generator().manual_seed(seed)
    mode = torch.where(torch.rand(n, generator=gen) < 0.5, 0.3, 0.7)
    u = (mode + 0.02 * torch.randn(n, generator=gen)).clamp(0, 1)
    return torch.cat([u, torch.tensor([0.0, 1.0])])


def test_kmeans_puts_levels_at_the_modes_pins_the_endpoints_and_is_deterministic():
    levels = learn_codebook(_bimodal(), 2)
    assert levels[0] == 0 and levels[-1] == 1 and levels.dtype == torch.float32
    torch.testing.assert_close(levels[1:3], torch.tensor([0.3, 0.7]), atol=0.01, rtol=0)
    assert torch.equal(levels, learn_codebook(_bimodal(), 2))
    for bits in NUQ_BITS:
        many = learn_codebook(_bimodal(), bits)
        assert many.shape == (1 << bits,) and (many.diff() >= 0).all() and many[0] == 0 and many[-1] == 1
    assert torch.equal(learn_codebook(torch.zeros(0), 3), uniform_levels(3))  # no data: the start
    x = torch.randn(1, 2, 64, 32, generator=torch.Generator().manual_seed(1))
    draws = [sample_normalised(x, "key", 500, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(draws[0][0], draws[1][0]) and draws[0][0].shape == draws[0][1].shape == (500,)
    assert draws[0][0].min() >= 0 and draws[0][0].max() <= 1 and (draws[0][1] > 0).all()
    (u0, w0), (u1, w1) = draws
    assert torch.equal(learn_codebook(u0, 3, w0), learn_codebook(u1, 3, w1))
    # a weight of 2 counts as the value twice
    twice = learn_codebook(torch.cat([_bimodal(), _bimodal()[:100]]), 2)
    weights = torch.cat([torch.full((100,), 2.0), torch.ones(_bimodal().numel() - 100)])
    torch.testing.assert_close(learn_codebook(_bimodal(), 2, weights), twice, rtol=0, atol=1e-6)


def _brute_force(x, cfg, levels):
    """Nearest level by brute force over the levels, group by group, written out directly."""
    xg = grouped(x.float(), cfg)
    lo, hi = xg.amin(-2, keepdim=True), xg.amax(-2, keepdim=True)
    zero, scale = lo.half().float(), (hi - lo).half().float()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    u = (xg - zero) / scale
    index = (u.unsqueeze(-1) - levels).abs().argmin(-1)
    return ungrouped(zero + levels[index] * scale, cfg, *x.shape[-2:])


@pytest.mark.parametrize("axis", ["per_channel", "per_token"])
@pytest.mark.parametrize("bits", NUQ_BITS)
def test_nuq_reads_the_nearest_level_as_a_direct_implementation(axis, bits):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(2, 3, 48, 32, generator=gen) * 3 + 1
    levels = learn_codebook(torch.rand(5000, generator=gen) ** 2, bits)
    cfg = _nuq(bits, axis)
    got = fake_quantize(x, cfg, codebook=levels)
    assert got.dtype == x.dtype
    torch.testing.assert_close(got, _brute_force(x, cfg, levels), rtol=0, atol=0)
    residual = _nuq(bits, axis, residual=16)
    partial = fake_quantize(x, residual, codebook=levels)  # the decode rule: the recent tokens exact
    assert torch.equal(partial[..., -16:, :], x[..., -16:, :])


def test_nuq_beats_uniform_at_two_bits_on_the_calibration_distribution():
    """Laplace keys / values with channels of different scales: the codebook learned on one draw
    reads a second draw with a lower squared error than uniform codes (about 11% lower)."""
    laplace = torch.distributions.Laplace(0.0, 1.0)
    torch.manual_seed(0)
    calib, test = (laplace.sample((1, 4, 256, 64)) * torch.linspace(0.5, 4, 64) for _ in range(2))
    for axis, side in (("per_channel", "key"), ("per_token", "value")):
        u, weights = sample_normalised(calib, side, 1 << 16, torch.Generator().manual_seed(0))
        levels = learn_codebook(u, 2, weights)
        assert levels[1] > 1 / 3 and levels[2] < 2 / 3  # pulled towards the dense middle
        nuq_err = (fake_quantize(test, _nuq(2, axis, 32), codebook=levels) - test).pow(2).mean()
        uniform = QuantConfig(bits=2, axis=axis, group_size=32)
        uniform_err = (fake_quantize(test, uniform) - test).pow(2).mean()
        assert nuq_err < 0.95 * uniform_err, (side, nuq_err, uniform_err)


@pytest.mark.parametrize("axis", ["per_channel", "per_token"])
@pytest.mark.parametrize("bits", NUQ_BITS)
def test_uniform_levels_reproduce_the_uniform_quantizer(axis, bits):
    """Exact where the group's range ``hi - lo`` is ``L * 2^k`` (L = 2^bits - 1: both fp16 scales and
    ``fl32(i / L) * L * 2^k`` exact); elsewhere the two differ by the fp16 rounding of the scale
    (``fp16(hi - lo) * i / L`` against ``fp16((hi - lo) / L) * i``: at most 2^-11 relative each, so
    ``2^-10 (hi - lo)``), and by one step only where a value lies within that of a decision boundary."""
    count = (1 << bits) - 1
    levels, uniform = uniform_levels(bits), QuantConfig(bits=bits, axis=axis, group_size=16)
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, count + 1, (2, 2, 32, 32), generator=gen).float()
    grid = grouped(codes, uniform)
    grid[..., :1, :], grid[..., 1:2, :] = 0, count  # every group spans codes 0 .. L
    x = ungrouped(grid, uniform, 32, 32) * 0.25 - 1.5  # hi - lo = L / 4, lo = -1.5: exact in fp16
    assert torch.equal(fake_quantize(x, _nuq(bits, axis), codebook=levels), fake_quantize(x, uniform))
    y = torch.randn(2, 2, 32, 32, generator=gen)
    yg = grouped(y, uniform)
    span = yg.amax(-2, keepdim=True) - yg.amin(-2, keepdim=True)
    diff = (grouped(fake_quantize(y, _nuq(bits, axis), codebook=levels) - fake_quantize(y, uniform), uniform)
            .abs() / span)
    position = (yg - yg.amin(-2, keepdim=True)) / span * count
    near = ((position - position.floor() - 0.5).abs() < 2**-8 * count)  # near a boundary
    assert (diff[~near] <= 2**-10).all()
    assert (diff <= 1 / count + 2**-10).all()


def test_bits_and_errors():
    x = torch.randn(1, 2, 32, 16)
    assert effective_bits(_nuq(2, group=32), 64) == effective_bits(QuantConfig(bits=2), 64)
    with pytest.raises(ValueError, match="calibration: codebook 'nuq' needs"):
        fake_quantize(x, _nuq())
    with pytest.raises(ValueError, match="codebook: only codebook 'nuq'"):
        fake_quantize(x, QuantConfig(bits=2, group_size=16), codebook=uniform_levels(2))
    with pytest.raises(ValueError, match="codebook: 4 levels"):
        fake_quantize(x, _nuq(), codebook=uniform_levels(3))
    with pytest.raises(ValueError, match="codebook: packed codes hold"):
        quantize(x, _nuq())
    with pytest.raises(ValueError, match="fp16 range"):
        read_nuq(torch.tensor([[-40000.0], [40000.0]]), QuantConfig(bits=2, group_size=2), uniform_levels(2))
    assert isinstance(make_side(_nuq(), {"codebook": uniform_levels(2)}), FormatSide)
    assert not _nuq().is_plain and _nuq().calibrated == "codebook"
    with pytest.raises(ValueError, match="calibration: codebook 'nuq' needs the calibration's codebook"):
        make_side(_nuq())
    assert normalised(torch.ones(1, 4, 2), calibration_config("key", 4, 2))[0].numel() == 0  # flat: skipped


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"codebook": "kmeans"}, "codebook: must be 'uniform' or 'nuq'"),
    ({"codebook": "nuq", "bits": 8}, "codebook: 'nuq' codebooks are learned for bits"),
    ({"codebook": "nuq", "symmetric": True}, "codebook: 'nuq' is asymmetric"),
    ({"codebook": "nuq", "format": "q4_0", "bits": 4, "axis": "per_token"}, "codebook: 'nuq' needs the"),
    ({"codebook": "nuq", "rotation": "hadamard"}, "codebook: the calibration learns"),
    ({"codebook": "nuq", "pre_rope": True}, "codebook: the calibration learns"),
])
def test_bad_codebook_fields_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig(**kwargs)


def test_nuq_round_trips_and_needs_a_calibration_job():
    run = RunSpec("n", key=_nuq(group=32), value=_nuq(3, "per_token", 32, outliers=0.01))
    data = run.to_dict()
    assert data["key"]["codebook"] == "nuq"
    assert "codebook" not in RunSpec("u", key=QuantConfig()).to_dict()["key"]
    assert RunSpec.from_dict(json.loads(json.dumps(data))) == run
    job = {"kind": "evaluation", "model": {"id": "org/m"}, "runs": [data]}
    with pytest.raises(ValueError, match="calibration_job: required by the .*nuq"):
        JobSpec.model_validate(job)
    assert JobSpec.model_validate({**job, "calibration_job": "c1"}).runs[0] == run


def _cal(layers=2):
    gen = torch.Generator().manual_seed(0)
    books = {name: torch.rand(layers, 1 << int(name[-1]), generator=gen).sort(-1).values
             for name in CODEBOOKS}
    return Calibration(torch.rand(layers, 3, 8, dtype=torch.float64, generator=gen),
                       torch.rand(layers, 3, 8, 2, generator=gen), {"rank": 2},
                       key_amax=torch.rand(layers, 3, generator=gen),
                       value_amax=torch.rand(layers, 3, generator=gen), codebooks=books)


def test_codebooks_round_trip_and_old_artifacts_still_load(tmp_path):
    cal = _cal()
    cal.save(tmp_path)
    for again in (Calibration.from_bytes(cal.to_bytes()), Calibration.load(tmp_path)):
        assert again.has_codebooks
        assert torch.equal(again.layer_codebook(1, "value", 3), cal.codebooks["value_codebook3"][1])
        static = again.layer_static(0, "key", _nuq(4))
        assert torch.equal(static["codebook"], cal.codebooks["key_codebook4"][0])
    assert cal.layer_static(0, "key", QuantConfig()) == {}
    old = Calibration.from_bytes(make_artifact(layers=2, kv_heads=2, head_dim=8, rank=3))
    assert not old.has_codebooks and old.codebooks == {}
    with pytest.raises(ValueError, match="calibration: made without the non-uniform codebooks"):
        old.layer_static(0, "key", _nuq())


def _blob(codebooks: dict[str, list[int]]) -> bytes:
    eig, basis = 2 * 3 * 8 * 8, 2 * 3 * 8 * 2 * 4
    header: dict[str, dict] = {"eigenvalues": {"dtype": "F64", "shape": [2, 3, 8], "data_offsets": [0, eig]},
              "basis": {"dtype": "F32", "shape": [2, 3, 8, 2], "data_offsets": [eig, eig + basis]}}
    end = eig + basis
    shapes: dict[str, list[int]] = {"key_amax": [2, 3], "value_amax": [2, 3], **codebooks}
    for name, shape in shapes.items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [end, end + 4 * shape[0] * shape[1]]}
        end = header[name]["data_offsets"][1]
    meta = json.dumps({"format": "headq-calibration/1"}).encode()
    return tar_of({META_NAME: meta, TENSORS_NAME: safetensors_bytes(header, bytes(end))})


def test_artifacts_with_bad_codebooks_are_refused():
    good = {name: [2, 1 << int(name[-1])] for name in CODEBOOKS}
    with pytest.raises(ValueError, match="^calibration: tensors: expected exactly"):
        Calibration.from_bytes(_blob({"key_codebook2": [2, 4]}))  # all or none
    with pytest.raises(ValueError, match="^calibration: tensors: key_codebook3 \\[2, 4\\] is not \\[2, 8\\]"):
        Calibration.from_bytes(_blob({**good, "key_codebook3": [2, 4]}))
    assert Calibration.from_bytes(_blob(good)).has_codebooks  # zeros: ascending, in [0, 1]


def test_presets_study_row_and_job_form_offer_nuq():
    _, keys = check_run_list(preset_runs("nuq+k3", 2, 16, 4, 8))
    assert keys.key.codebook == "nuq" and keys.key.bits == 3 and keys.value is None
    assert (keys.key.axis, keys.key.group_size, keys.key.residual) == ("per_channel", 16, 4)
    _, both = check_run_list(preset_runs("nuq+kv2", 2, 32, 0, 8))
    assert both.value.codebook == "nuq" and both.value.axis == "per_token"
    runs = {run.name: run for run in format_runs(group=32, rank=4)}
    assert runs["kvquant2"].key.codebook == runs["kvquant2+headq4"].value.codebook == "nuq"
    assert format_label(runs["kvquant2"].to_dict()["key"]) == "int2 per_channel G32 nuq"
    spec = build_spec({**FORM, "nuq": True, "value_bits": 2})
    JobSpec.model_validate(spec)
    assert [r["name"] for r in spec["runs"]] == ["dense", "nuq+k2-v2", "nuq+k2-headq-r8-v2"]
    assert spec["runs"][1]["key"]["codebook"] == spec["runs"][1]["value"]["codebook"] == "nuq"
    assert "codebook" not in build_spec(FORM)["runs"][1]["key"]
