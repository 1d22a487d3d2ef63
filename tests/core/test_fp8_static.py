"""Static FP8 scales (``fp8_static``): the read-back against torch's own float8 casts of ``x / s``
with ``s = amax / fp8_max`` from a given amax, saturation beyond it, the spec rules, and calibration
artifacts with and without the amax tensors."""

import json

import pytest
import torch

from headq_core.config import QuantConfig, RunSpec
from headq_core.evaluation.calibrate import Calibration
from headq_core.method.budget import effective_bits
from headq_core.method.quant import fake_quantize
from headq_spec.artifact import META_NAME, TENSORS_NAME
from headq_spec.jobs import JobSpec
from tests.app.artifactgen import make_artifact, safetensors_bytes, tar_of

DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def _static(name, scope, **kw):
    return QuantConfig(format=name, bits=8, axis="per_token", fp8_scale=scope, fp8_static=True, **kw)


def _x(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 10, 16, generator=gen) * torch.tensor([0.5, 2.0, 8.0]).view(3, 1, 1)


def _reference(x, amax, name, scope):
    """torch's float8 cast of x / s clamped to the finite range, times s (s from amax [heads])."""
    top = torch.finfo(DTYPES[name]).max
    peak = amax.max().view(1, 1, 1, 1) if scope == "tensor" else amax.view(1, -1, 1, 1)
    s = torch.where(peak == 0, torch.ones_like(peak), peak / top)
    return (x / s).clamp(-top, top).to(DTYPES[name]).float() * s


@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("scope", ["tensor", "head"])
def test_static_scale_against_torch_casts(name, scope):
    x = _x()
    amax = torch.tensor([0.7, 3.0, 0.0])  # below the data's range (saturation), and a zero head
    got = fake_quantize(x, _static(name, scope), amax=amax)
    assert torch.equal(got, _reference(x, amax, name, scope))
    # the amax of the data itself (one sequence): the dynamic scale's numbers
    one = x[:1]
    dims = (0, 1, 2, 3) if scope == "tensor" else (0, 2, 3)
    data_amax = one.abs().amax(dim=dims).expand(3)
    dynamic = QuantConfig(format=name, bits=8, axis="per_token", fp8_scale=scope)
    assert torch.equal(fake_quantize(one, _static(name, scope), amax=data_amax), fake_quantize(one, dynamic))


def test_values_beyond_the_static_range_saturate():
    x = torch.tensor([[[[1000.0, -1000.0, 3.0, 0.5]]]])
    amax = torch.tensor([4.0])
    s = torch.tensor(4.0) / 448
    got = fake_quantize(x, _static("fp8_e4m3", "tensor"), amax=amax)
    assert got[0, 0, 0, :2].tolist() == [(448 * s).item(), (-448 * s).item()]  # SATFINITE, not NaN
    assert torch.isfinite(got).all() and got.abs().max() <= 4.0 * (1 + 1e-6)
    assert got[0, 0, 0, 2].item() == pytest.approx(3.0, rel=2**-3)


def test_the_amax_goes_only_where_it_is_read():
    x = _x()
    with pytest.raises(ValueError, match="calibration: static fp8 scales"):
        fake_quantize(x, _static("fp8_e4m3", "head"))
    with pytest.raises(ValueError, match="amax: only static fp8 scales"):
        fake_quantize(x, QuantConfig(format="fp8_e4m3", bits=8, axis="per_token"), amax=torch.ones(3))
    with pytest.raises(ValueError, match="amax: only static fp8 scales"):
        fake_quantize(x, QuantConfig(bits=2), amax=torch.ones(3))
    with pytest.raises(ValueError, match="calibration: amax of 2 heads"):
        fake_quantize(x, _static("fp8_e4m3", "head"), amax=torch.ones(2))


def test_effective_bits_are_eight():
    for scope in ("tensor", "head"):
        assert effective_bits(_static("fp8_e4m3", scope), 64) == 8.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"fp8_static": True}, "fp8_static: needs an fp8 format"),
    ({"format": "fp8_e4m3", "bits": 8, "axis": "per_token", "fp8_scale": "token", "fp8_static": True},
     "fp8_static: needs an fp8 format with a 'tensor' or 'head' scale"),
    ({"format": "fp8_e4m3", "bits": 8, "axis": "per_token", "fp8_scale": "unit", "fp8_static": True},
     "fp8_static: needs an fp8 format"),
    ({"format": "q8_0", "bits": 8, "axis": "per_token", "fp8_static": True}, "fp8_static: needs an fp8"),
    ({"format": "fp8_e4m3", "bits": 8, "axis": "per_token", "fp8_static": 1}, "fp8_static: must be true"),
    ({"format": "fp8_e4m3", "bits": 8, "axis": "per_token", "fp8_static": True, "rotation": "hadamard"},
     "fp8_static: the calibration measures unrotated"),
])
def test_bad_static_fields_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig(**kwargs)


def test_static_round_trips_and_needs_a_calibration_job():
    run = RunSpec("s", key=_static("fp8_e4m3", "tensor"), value=_static("fp8_e5m2", "head"))
    data = run.to_dict()
    assert data["key"]["fp8_static"] is True and "fp8_scale" not in data["key"]
    assert RunSpec.from_dict(json.loads(json.dumps(data))) == run
    assert "fp8_static" not in RunSpec("d", key=QuantConfig(format="fp8_e4m3", bits=8,
                                                            axis="per_token")).to_dict()["key"]
    job = {"kind": "evaluation", "model": {"id": "org/m"}, "runs": [data]}
    with pytest.raises(ValueError, match="calibration_job: required by the .* static fp8 runs"):
        JobSpec.model_validate(job)
    spec = JobSpec.model_validate({**job, "calibration_job": "c1"})
    assert spec.runs[0] == run and JobSpec.model_validate(spec.model_dump(mode="json")) == spec
    with pytest.raises(ValueError, match="runs.0.key.fp8_static"):
        JobSpec.model_validate({**job, "calibration_job": "c1",
                                "runs": [{**data, "key": {**data["key"], "fp8_static": "true"}}]})


def _cal(amax=True):
    gen = torch.Generator().manual_seed(0)
    extra = {"key_amax": torch.rand(2, 3, generator=gen), "value_amax": torch.rand(2, 3, generator=gen)}
    return Calibration(torch.rand(2, 3, 8, dtype=torch.float64, generator=gen),
                       torch.rand(2, 3, 8, 2, generator=gen), {"rank": 2}, **(extra if amax else {}))


def test_the_amax_round_trips_and_old_artifacts_still_load(tmp_path):
    cal = _cal()
    cal.save(tmp_path)
    for again in (Calibration.from_bytes(cal.to_bytes()), Calibration.load(tmp_path)):
        assert again.has_amax and torch.equal(again.key_amax, cal.key_amax)
        assert torch.equal(again.layer_amax(1, "value"), cal.value_amax[1])
    old = Calibration.from_bytes(make_artifact(layers=2, kv_heads=2, head_dim=8, rank=3))
    assert not old.has_amax and old.key_amax is None and old.basis.shape == (2, 2, 8, 3)
    with pytest.raises(ValueError, match="calibration: made without the key / value amax"):
        old.layer_amax(0, "key")
    assert not Calibration.from_bytes(_cal(amax=False).to_bytes()).has_amax


@pytest.mark.parametrize(("amax", "message"), [
    ({"key_amax": [2, 3]}, "expected exactly"),  # one without the other
    ({"key_amax": [2, 3], "value_amax": [3, 2]}, "value_amax \\[3, 2\\] does not fit basis"),
])
def test_artifacts_with_bad_amax_are_refused(amax, message):
    eig, basis = 2 * 3 * 8 * 8, 2 * 3 * 8 * 2 * 4
    header = {"eigenvalues": {"dtype": "F64", "shape": [2, 3, 8], "data_offsets": [0, eig]},
              "basis": {"dtype": "F32", "shape": [2, 3, 8, 2], "data_offsets": [eig, eig + basis]}}
    end = eig + basis
    for name, shape in amax.items():
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [end, end + 4 * shape[0] * shape[1]]}
        end = header[name]["data_offsets"][1]
    meta = json.dumps({"format": "headq-calibration/1"}).encode()
    blob = tar_of({META_NAME: meta, TENSORS_NAME: safetensors_bytes(header, bytes(end))})
    with pytest.raises(ValueError, match=f"^calibration: tensors: .*{message}"):
        Calibration.from_bytes(blob)
