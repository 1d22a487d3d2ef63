"""The published study (docs/results/paper): the bundle is an importable bundle of the study's 18
jobs, and every table of summary.json is what the report computes from that very bundle — the
numbers in docs/results.md come from the committed data, not from anywhere else."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from headq_spec.results import Bundle
from studies.paper.records import read_jobs
from studies.paper.specs import study_jobs
from studies.paper.summary import clean, summarize

PUBLISHED = Path(__file__).resolve().parents[2] / "docs" / "results" / "paper"


@pytest.fixture(scope="module")
def bundle() -> dict:
    return json.loads(gzip.decompress((PUBLISHED / "bundle.json.gz").read_bytes()))


def test_bundle_is_the_study_and_importable(bundle):
    Bundle.model_validate(bundle)
    specs = [job["spec"] for job in bundle["jobs"]]
    assert specs == [job.spec for job in study_jobs()]  # every job, in the runner's order
    assert all(job["results"]["model"]["id"] == "builtin:smollm2-135m" for job in bundle["jobs"])
    evaluations = [job["results"] for job in bundle["jobs"] if job["results"]["kind"] == "evaluation"]
    assert {doc["dataset"]["tokens"] for doc in evaluations} == {65536}
    assert all(job["artifact_base64"] for job in bundle["jobs"] if job["spec"]["kind"] == "calibration")


def test_summary_is_recomputed_from_the_bundle(bundle, tmp_path):
    for job, study in zip(bundle["jobs"], study_jobs(), strict=True):
        item = {"name": study.name, "family": study.family, **job}
        (tmp_path / f"{study.name}.json.gz").write_bytes(gzip.compress(json.dumps(item).encode()))
    recomputed = clean(summarize(read_jobs(tmp_path)))
    published = json.loads((PUBLISHED / "summary.json").read_text())
    for key in published.keys() - {"provenance"}:  # provenance also holds host / wall time of the run
        assert json.loads(json.dumps(recomputed[key])) == published[key], key
    assert published["goal"]["met"] and published["goal"]["best_removed"] > 0.84
