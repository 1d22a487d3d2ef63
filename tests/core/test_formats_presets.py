"""The format presets of ``headq eval --runs``: valid run lists named as the issue names them, with
HeadQ variants, and listed by ``--help``."""

import pytest

from headq_cli.main import main
from headq_cli.presets import FORMAT_PRESETS, PRESETS, preset_runs
from headq_core.method.budget import effective_bits
from headq_spec.jobs import JobSpec
from headq_spec.runs import check_run_list


def test_every_format_preset_is_a_valid_job():
    assert {"fp8_e4m3", "fp8_e5m2", "q8_0", "q4_0", "q4_1", "hadamard+k2", "q4_0+headq",
            "hadamard+k2+headq", "formats", "formats+headq"} <= set(PRESETS)
    for preset in PRESETS:
        runs = preset_runs(preset, 2, 32, 0, 8)
        specs = check_run_list(runs)
        assert specs[0].is_dense
        job = {"kind": "evaluation", "model": {"id": "org/m"}, "calibration_job": "c1", "runs": runs}
        assert [r.to_dict() for r in JobSpec.model_validate(job).runs] == [s.to_dict() for s in specs]
    everything = {r["name"] for r in preset_runs("formats+headq", 2, 32, 0, 8)}
    assert everything == {"dense", *FORMAT_PRESETS, *(f"{name}+headq8" for name in FORMAT_PRESETS)}


def test_format_preset_contents():
    dense, q4, q4_hq = check_run_list(preset_runs("q4_0+headq", 2, 32, 0, 8))
    assert (q4.name, q4_hq.name) == ("q4_0", "q4_0+headq8")
    assert q4.key == q4.value and q4.key.format == "q4_0" and q4_hq.headq.rank == 8
    assert effective_bits(q4.key, 64) == 4.5
    _, had = check_run_list(preset_runs("hadamard+k3", 2, 16, 4, 8))
    assert had.value is None and had.key.rotation == "hadamard" and had.key.bits == 3
    assert (had.key.axis, had.key.group_size, had.key.residual) == ("per_channel", 16, 4)
    _, sym = check_run_list(preset_runs("int4-sym", 2, 64, 0, 8))
    assert sym.key.symmetric and sym.key.axis == "per_token" and effective_bits(sym.key, 64) == 4.25
    _, fp8 = check_run_list(preset_runs("fp8_e5m2", 2, 32, 0, 8))
    assert fp8.key.format == "fp8_e5m2" and effective_bits(fp8.value, 64) == 8.0
    with pytest.raises(ValueError, match="runs: unknown preset"):
        preset_runs("q3_k", 2, 32, 0, 8)


def test_help_lists_the_format_presets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in (*FORMAT_PRESETS, "formats+headq", "<name>+headq"):
        assert name in text, name


def test_static_fp8_and_outlier_presets():
    _, static = check_run_list(preset_runs("fp8_e4m3_static", 2, 32, 0, 8))
    assert static.key == static.value and static.key.fp8_static and static.key.fp8_scale == "tensor"
    runs = preset_runs("fp8_e4m3_static", 2, 32, 0, 8)
    job = {"kind": "evaluation", "model": {"id": "org/m"}, "runs": runs}
    with pytest.raises(ValueError, match="calibration_job: required by"):
        JobSpec.model_validate(job)
    _, kivi = check_run_list(preset_runs("kivi2+outliers1%", 2, 32, 0, 8))
    assert (kivi.key.axis, kivi.value.axis, kivi.key.bits) == ("per_channel", "per_token", 2)
    assert kivi.key.outliers == kivi.value.outliers == 0.01
    assert effective_bits(kivi.key, 64) == 2 + 32 / 32 + 21 * 32 / 2048
