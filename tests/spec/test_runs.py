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
     ({"side_bits": 2}, "side_bits")],
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
