"""The pydantic job spec (headq_spec.jobs) on its own: defaults, kind rules, run configs validated by
the dataclasses of headq_spec.runs, model-id classification, canonical form and fingerprint."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from headq_spec.jobs import JobSpec, model_location
from headq_spec.runs import HeadQConfig, QuantConfig, RunSpec


def test_calibration_defaults_and_runs_round_trip() -> None:
    cal = JobSpec.model_validate({"kind": "calibration", "model": {"id": "builtin:smollm2-135m"}})
    assert cal.calibration is not None and cal.calibration.rank == 64
    assert (cal.dataset.source, cal.dataset.name, cal.dataset.window) == ("builtin", "sotu", 1024)
    spec = JobSpec.model_validate({
        "kind": "evaluation", "model": {"id": "org/m"}, "calibration_job": "c1",
        "runs": [{"name": "hq", "key": {"bits": 2}, "headq": {"rank": 4, "sign": -1}}, {"name": "dense"}]})
    assert spec.runs[0] == RunSpec(name="hq", key=QuantConfig(bits=2), headq=HeadQConfig(rank=4, sign=-1))
    dumped = spec.model_dump(mode="json")
    assert dumped["runs"][1] == {"name": "dense"}
    assert [RunSpec.from_dict(r) for r in dumped["runs"]] == spec.runs
    assert JobSpec.model_validate(dumped) == spec


def test_fingerprint_is_canonical() -> None:
    a = JobSpec.model_validate({"kind": "calibration", "model": {"id": "org/m", "dtype": "float32"}})
    b = JobSpec.model_validate({"model": {"dtype": "float32", "id": "org/m"}, "kind": "calibration",
                                "calibration": {"rank": 64}})
    c = JobSpec.model_validate({"kind": "calibration", "model": {"id": "org/m"}, "seed": 1})
    assert a.canonical_json() == b.canonical_json() and a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint() and len(a.fingerprint()) == 64


@pytest.mark.parametrize(("model_id", "where"), [
    ("builtin:smollm2-135m", "builtin"), ("gpt2", "hub"), ("HuggingFaceTB/SmolLM2-135M", "hub"),
    ("/models/x", "path"), ("./x", "path"), ("~/x", "path"), ("a/b/c", "path"), ("a/../b", "path"),
    ("C:\\models", "path")])
def test_model_location(model_id: str, where: str) -> None:
    assert model_location(model_id) == where


def test_errors_carry_the_dataclass_wording() -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({"kind": "evaluation", "model": {"id": "a/b"},
                                "runs": [{"name": "x", "key": {"bits": 7}}]})
    [error] = info.value.errors()
    assert error["loc"] == ("runs", 0, "key") and "bits: must be one of" in error["msg"]
    with pytest.raises(ValidationError, match="trust_remote_code"):
        JobSpec.model_validate({"kind": "calibration", "model": {"id": "a/b"},
                                "dataset": {"trust_remote_code": True}})


def test_max_tokens_below_one_window_is_refused_before_any_work() -> None:
    with pytest.raises(ValidationError, match=r"max_tokens: must be >= window \(128\), got 64"):
        JobSpec.model_validate({"kind": "calibration", "model": {"id": "a/b"},
                                "dataset": {"window": 128, "max_tokens": 64}})
    spec = JobSpec.model_validate({"kind": "calibration", "model": {"id": "a/b"},
                                   "dataset": {"window": 128, "max_tokens": 128}})
    assert spec.dataset.max_tokens == 128
