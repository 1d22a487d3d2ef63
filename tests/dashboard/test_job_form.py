"""The Jobs form builds specs the API's own validator (headq_spec.jobs.JobSpec) accepts."""

from __future__ import annotations

import pytest

from app.dashboard.job_form import build_spec, run_name
from headq_spec.jobs import JobSpec

FORM = {
    "label": "t",
    "model": "builtin:smollm2-135m",
    "calibration_job": "cal-1",
    "bits": 2,
    "group_size": 32,
    "residual": 0,
    "axis": "per_channel",
    "headq": True,
    "rank": 8,
    "basis": "query_pca",
    "sign": 1,
    "value_bits": "dense",
    "value_policy": "none",
    "keep_fraction": 0.1,
    "baselines": True,
    "dataset_source": "builtin",
    "dataset_name": "sotu",
    "split": "",
    "tokens": 32768,
    "window": 1024,
    "head_windows": None,
}


def test_dataset_fields_reach_the_spec():
    spec = build_spec({**FORM, "dataset_source": "hf", "dataset_name": "wikitext", "split": " test ",
                       "tokens": 4096, "window": 512, "head_windows": 4})
    assert JobSpec.model_validate(spec).dataset.head_windows == 4
    assert spec["dataset"] == {"source": "hf", "name": "wikitext", "split": "test", "max_tokens": 4096,
                               "window": 512, "head_windows": 4}
    assert "split" not in build_spec(FORM)["dataset"] and "head_windows" not in build_spec(FORM)["dataset"]
    with pytest.raises(ValueError, match="window"):
        build_spec({**FORM, "window": ""})


def test_headq_with_baselines_is_a_valid_spec():
    spec = build_spec(FORM)
    JobSpec.model_validate(spec)
    assert [r["name"] for r in spec["runs"]] == ["dense", "k2", "k2-headq-r8"]
    assert spec["runs"][2]["headq"] == {"rank": 8, "basis": "query_pca", "sign": 1}
    assert "headq" not in spec["runs"][1] and spec["calibration_job"] == "cal-1"


def test_value_policy_run():
    spec = build_spec(
        {
            **FORM,
            "headq": False,
            "baselines": False,
            "value_bits": 2,
            "value_policy": "online",
            "keep_fraction": "0.2",
            "calibration_job": None,
        }
    )
    JobSpec.model_validate(spec)
    (run,) = spec["runs"]
    assert run["name"] == "k2-v2-a2online" and run["value"]["bits"] == 2
    assert run["value_policy"] == {"mode": "online", "keep_fraction": 0.2}
    assert "calibration_job" not in spec


def test_names_mark_controls():
    assert (
        run_name(2, {"rank": 4, "basis": "random", "sign": -1}, None, None) == "k2-headq-r4-random-wrongsign"
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": " "}, "model"),
        ({"bits": None}, "bits"),
        ({"group_size": "x"}, "group_size"),
        ({"rank": 2.5}, "rank"),
        ({"value_policy": "online"}, "value_policy"),
    ],
)
def test_bad_form_values_name_the_field(change, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        build_spec({**FORM, **change})


@pytest.mark.parametrize("fmt", ["q4_0", "q8_0", "iq4_nl", "fp8_e4m3", "fp8_e5m2", "q5_1"])
def test_an_engine_format_reaches_keys_and_values_at_its_own_width(fmt):
    """The format dropdown sets the format on keys and (with value bits) values: its own code width,
    per token, blocks of 32, whatever bits / axis / group size the int fields still show."""
    spec = build_spec({**FORM, "format": fmt, "value_bits": 2, "group_size": 64, "axis": "per_channel"})
    runs = JobSpec.model_validate(spec).runs
    assert [r.name for r in runs] == ["dense", f"k-{fmt}-v-{fmt}", f"k-{fmt}-headq-r8-v-{fmt}"]
    for side in (runs[2].key, runs[2].value):
        assert side.format == fmt and side.axis == "per_token" and side.group_size == 32
    widths = {"q4_0": 4, "q8_0": 8, "iq4_nl": 4, "fp8_e4m3": 8, "fp8_e5m2": 8, "q5_1": 5}
    assert runs[2].key.bits == widths[fmt]


def test_rotation_applies_to_both_sides_and_names_the_run():
    spec = build_spec({**FORM, "rotation": True, "value_bits": 4, "headq": False, "baselines": False})
    (run,) = JobSpec.model_validate(spec).runs
    assert run.name == "hadamard+k2-v4" and run.key.rotation == run.value.rotation == "hadamard"
    assert "rotation" not in build_spec(FORM)["runs"][1]["key"]


def test_an_unknown_format_names_the_field():
    with pytest.raises(ValueError, match="format: must be 'int' or one of"):
        build_spec({**FORM, "format": "q3_k"})
