"""The format fields of a run spec: validated with errors naming the field, stated in the JSON
Schema, round-tripped through dicts and job specs, and absent from the dicts (and hashes) of every
configuration that leaves them at their defaults."""

import json

import pytest
from pydantic import ValidationError

from headq_spec.jobs import JobSpec
from headq_spec.runs import FORMAT_BITS, FORMAT_DEFAULTS, HeadQConfig, QuantConfig, RunSpec, ValuePolicyConfig

ENGINE = {"bits": 4, "axis": "per_token", "format": "q4_0"}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"format": "q3_k"}, "format: must be one of"),
    ({"format": "q4_0", "axis": "per_token"}, "bits: format 'q4_0' stores 4-bit codes: give bits 4, got 2"),
    ({"format": "q4_0", "bits": 4}, "axis: format 'q4_0' stores each token as it arrives"),
    ({**ENGINE, "group_size": 16}, "group_size: format 'q4_0' has blocks of 32 values"),
    ({**ENGINE, "symmetric": True}, "symmetric: only for the 'int' format"),
    ({"bits": 5}, "bits: must be one of"),
    ({"symmetric": "yes"}, "symmetric: must be true or false"),
    ({"bits": 1, "symmetric": True}, "symmetric: needs bits >= 2"),
    ({"fp8_scale": "row"}, "fp8_scale: must be"),
    ({"fp8_scale": "token"}, "fp8_scale: only used by the fp8 formats"),
    ({"rotation": "dct"}, "rotation: must be 'none' or 'hadamard'"),
    ({"rotation_seed": 3}, "rotation_seed: only used with rotation 'hadamard'"),
    ({"rotation": "hadamard", "rotation_seed": -1}, "rotation_seed: must be an integer"),
])
def test_bad_format_fields_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig(**kwargs)


def test_every_format_with_its_width_is_valid_and_round_trips():
    for fmt, bits in FORMAT_BITS.items():
        extra = {"fp8_scale": "token"} if fmt.startswith("fp8") else {}
        key = QuantConfig(format=fmt, bits=bits, axis="per_token", rotation="hadamard", rotation_seed=9,
                          **extra)
        run = RunSpec(f"{fmt}+headq", key=key, value=QuantConfig(format=fmt, bits=bits, axis="per_token"),
                      headq=HeadQConfig(rank=4))
        data = run.to_dict()
        assert data["key"]["format"] == fmt and data["key"]["rotation"] == "hadamard"
        assert "rotation" not in data["value"] and data["value"]["format"] == fmt
        assert RunSpec.from_dict(json.loads(json.dumps(data))) == run
    sym = RunSpec("int4-sym", value=QuantConfig(bits=4, axis="per_token", symmetric=True))
    assert sym.to_dict()["value"]["symmetric"] is True
    assert RunSpec.from_dict(sym.to_dict()) == sym


def test_defaults_leave_existing_specs_identical():
    old = {"name": "kv2+headq8", "key": {"bits": 2, "axis": "per_channel", "group_size": 32, "residual": 0},
           "value": {"bits": 2, "axis": "per_token", "group_size": 32, "residual": 128},
           "headq": {"rank": 8, "basis": "query_pca", "sign": 1, "side_bits": 8, "seed": 0,
                     "side_scale": "token"}}
    assert RunSpec.from_dict(old).to_dict() == old
    assert QuantConfig().format == FORMAT_DEFAULTS["format"] and QuantConfig().is_plain
    job = {"kind": "evaluation", "model": {"id": "org/m"}, "calibration_job": "c1", "runs": [old]}
    dumped = JobSpec.model_validate(job).model_dump(mode="json")["runs"][0]
    assert dumped == old  # the canonical JSON, hence the job fingerprint, is what it was
    canonical = JobSpec.model_validate(job).canonical_json()
    assert not any(f'"{name}"' in canonical for name in FORMAT_DEFAULTS)


def test_job_spec_takes_and_refuses_formats():
    def job(key, value=None, **run):
        return {"kind": "evaluation", "model": {"id": "org/m"},
                "runs": [{"name": "r", "key": key, **({"value": value} if value else {}), **run}]}

    spec = JobSpec.model_validate(job({**ENGINE, "rotation": "hadamard"}, {"format": "fp8_e5m2", "bits": 8,
                                                                          "axis": "per_token",
                                                                          "fp8_scale": "head"}))
    assert spec.runs[0].key.format == "q4_0" and spec.runs[0].value.fp8_scale == "head"
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec
    for key, message in (({**ENGINE, "format": 4}, "0.key.format: must be of type str"),
                         ({**ENGINE, "bits": 2}, "bits: format 'q4_0' stores 4-bit codes"),
                         ({**ENGINE, "rotation_seed": "1"}, "0.key.rotation_seed: must be of type int"),
                         ({"bits": 4, "symmetric": "true"}, "runs.0.key.symmetric"),
                         ({"bits": 4, "symmetric": 1}, "runs.0.key.symmetric")):
        with pytest.raises(ValidationError, match=message):
            JobSpec.model_validate(job(key))
    policy = {"mode": "online", "keep_fraction": 0.1, "high_bits": 8}
    with pytest.raises(ValidationError, match="value_policy: needs an 'int' value format"):
        JobSpec.model_validate(job({"bits": 2}, {"format": "q8_0", "bits": 8, "axis": "per_token"},
                                   value_policy=policy))
    RunSpec("a2", value=QuantConfig(bits=2, axis="per_token", symmetric=True),
            value_policy=ValuePolicyConfig())


def test_json_schema_states_the_format_fields():
    props = JobSpec.model_json_schema()["$defs"]["QuantConfig"]["properties"]
    assert set(props["format"]["enum"]) == {"int", *FORMAT_BITS}
    assert props["fp8_scale"]["enum"] == ["tensor", "head", "token", "unit"]
    assert props["rotation"]["enum"] == ["none", "hadamard"]
    assert props["symmetric"]["type"] == "boolean"
    assert props["rotation_seed"]["minimum"] == 0 and props["rotation_seed"]["maximum"] == 2**32 - 1
    assert set(props["bits"]["enum"]) == {1, 2, 3, 4, 5, 8}
