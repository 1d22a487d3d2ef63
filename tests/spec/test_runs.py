"""Config validation: every bad field raises ValueError naming it; specs round-trip as dicts."""

import pytest

from headq_spec.runs import HeadQConfig, QuantConfig, RunSpec, ValuePolicyConfig


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"bits": 0}, "bits"), ({"bits": 9}, "bits"), ({"axis": "rows"}, "axis"),
     ({"group_size": 0}, "group_size"), ({"residual": -1}, "residual")],
)
def test_quant_config_rejects_bad_fields(kwargs, field):
    with pytest.raises(ValueError, match=field):
        QuantConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"rank": 0}, "rank"), ({"basis": "svd"}, "basis"), ({"sign": 0}, "sign"),
     ({"side_bits": 3}, "side_bits"), ({"side_scale": "row"}, "side_scale"),
     ({"side_bits": 16, "side_scale": "group"}, "side_scale")],
)
def test_headq_config_rejects_bad_fields(kwargs, field):
    with pytest.raises(ValueError, match=field):
        HeadQConfig(**kwargs)


def test_value_policy_budget_conversion():
    policy = ValuePolicyConfig(keep_fraction=None, target_bits=3.0, high_bits=8)
    assert policy.fraction_for(2) == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="target_bits"):
        ValuePolicyConfig(keep_fraction=None, target_bits=9.0).fraction_for(2)
    with pytest.raises(ValueError, match="keep_fraction"):
        ValuePolicyConfig(keep_fraction=0.1, target_bits=3.0)


def test_run_spec_round_trip_and_errors():
    spec = RunSpec("k2+headq", key=QuantConfig(bits=2), headq=HeadQConfig(rank=4, sign=-1))
    assert RunSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="headq"):
        RunSpec("bad", headq=HeadQConfig())
    with pytest.raises(ValueError, match="unknown"):
        RunSpec.from_dict({"name": "x", "keys": {}})
    with pytest.raises(ValueError, match="key"):
        RunSpec.from_dict({"name": "x", "key": {"bitz": 2}})


def test_side_code_options_round_trip_and_need_per_channel_keys():
    for bits in (2, 4, 8):
        for scale in ("token", "group"):
            spec = RunSpec("hq", key=QuantConfig(bits=2), headq=HeadQConfig(side_bits=bits, side_scale=scale))
            assert spec.to_dict()["headq"]["side_scale"] == scale
            assert RunSpec.from_dict(spec.to_dict()) == spec
    assert HeadQConfig().side_scale == "token"
    with pytest.raises(ValueError, match="headq.side_scale: 'group' needs per_channel keys"):
        RunSpec("hq", key=QuantConfig(axis="per_token"), headq=HeadQConfig(side_bits=4, side_scale="group"))
    RunSpec("hq", key=QuantConfig(axis="per_token"), headq=HeadQConfig(side_bits=2))  # token scales: fine


def test_job_spec_accepts_and_rejects_side_code_options():
    from pydantic import ValidationError

    from headq_spec.jobs import JobSpec

    def job(headq, key=None):
        return {"kind": "evaluation", "model": {"id": "org/m"}, "calibration_job": "c1",
                "runs": [{"name": "hq", "key": key or {"bits": 2}, "headq": headq}]}

    spec = JobSpec.model_validate(job({"side_bits": 2, "side_scale": "group"}))
    assert spec.runs[0].headq == HeadQConfig(side_bits=2, side_scale="group")
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec
    bad = [({"side_scale": 1}, "0.headq.side_scale: must be of type str"),
           ({"side_scale": "row"}, "runs.0.headq.side_scale"),
           ({"side_bits": 16, "side_scale": "group"}, "side_scale: 'group' needs side_bits < 16"),
           ({"side_bits": 3}, "side_bits: must be one of")]
    for headq, message in bad:
        with pytest.raises(ValidationError, match=message):
            JobSpec.model_validate(job(headq))
    with pytest.raises(ValidationError, match="needs per_channel keys"):
        JobSpec.model_validate(job({"side_scale": "group"}, {"axis": "per_token"}))
