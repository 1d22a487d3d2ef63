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
