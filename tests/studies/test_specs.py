"""The paper study's job specs: all valid job specs, unique names, the grid the issue asks for."""

from headq_spec.jobs import JobSpec
from headq_spec.runs import RunSpec
from studies.paper.run import SMOKE
from studies.paper.specs import CAL_SHAKESPEARE, CAL_SOTU, study_jobs


def test_every_job_is_a_valid_job_spec_with_unique_run_names():
    jobs = study_jobs()
    assert len({j.name for j in jobs}) == len(jobs)
    names = {j.name for j in jobs}
    for job in jobs:
        spec = JobSpec.model_validate(job.spec)
        runs = [r["name"] for r in job.spec.get("runs", [])]
        assert len(set(runs)) == len(runs)
        if spec.kind == "evaluation":
            assert job.depends in names and spec.calibration_job == job.depends
            assert runs[0] == "dense" and spec.dataset.max_tokens >= 65536
            assert spec.dataset.window == 1024


def test_the_grid_of_experiment_1():
    runs = [RunSpec.from_dict(r) for j in study_jobs() if j.family == "exp1" for r in j.spec["runs"][1:]]
    keys = {(r.key.bits, r.key.axis, r.key.group_size, r.key.residual) for r in runs}
    assert len(keys) == 2 * (3 + 2) * 2  # bits x (per_channel G + per_token G) x R
    ranks = {(r.headq.rank, r.headq.side_bits) for r in runs if r.headq}
    assert ranks == {(r, s) for r in (2, 4, 8, 16, 32) for s in (16, 8, 4)}
    assert sum(r.headq is None for r in runs) == len(keys)


def test_controls_and_calibrations():
    jobs = {j.name: j for j in study_jobs()}
    controls = [RunSpec.from_dict(r) for r in jobs["exp2-controls"].spec["runs"][1:]]
    bases = {r.headq.basis for r in controls if r.headq}
    assert bases == {"query_pca", "key_pca", "random"}
    assert any(r.headq and r.headq.sign == -1 for r in controls)
    assert {r.intervention.subspace for r in controls if r.intervention} == {"outside", "inside"}
    assert jobs[CAL_SOTU].spec["dataset"]["name"] == "sotu"
    assert jobs[CAL_SHAKESPEARE].spec["dataset"]["name"] == "shakespeare"
    small = {j.name: j for j in study_jobs(SMOKE)}
    assert small["exp4-fullkv"].spec["dataset"]["max_tokens"] == SMOKE.eval_tokens


def test_written_specs_are_the_study_jobs(tmp_path):
    import json

    from studies.paper.run import main

    assert main(["--out", str(tmp_path), "--write-specs"]) == 0
    for job in study_jobs():
        assert json.loads((tmp_path / f"{job.name}.json").read_text()) == job.spec
