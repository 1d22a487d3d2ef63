"""Records and rank statistics of the paper report: Spearman against scipy, one record per
configuration, the study's missing jobs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from studies.paper.records import head_mean, head_sum, missing_jobs, unique
from studies.paper.specs import study_jobs
from studies.paper.stats import spearman
from tests.studies.handmade import K2, hq, item, records, run


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 40).astype(float)
    y = x + rng.integers(0, 3, 40)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    # hand case without ties: 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: ranks [1.5, 3, 1.5, 4] vs [1, 2, 3, 4], Pearson of the ranks by hand = 0.6324555
    assert spearman([10, 20, 10, 30], [1, 2, 3, 4]) == pytest.approx(0.6324555320336759)
    assert spearman([1, 2, float("nan"), 4, 5], [2, 1, 3, 4, 5]) == pytest.approx(0.8)  # nan pair dropped
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [1, 2]) is None
    with pytest.raises(ValueError, match="y"):
        spearman([1, 2, 3], [1, 2])


def test_missing_jobs_names_the_absent_ones():
    names = [j.name for j in study_jobs()]
    assert missing_jobs(names[1:]) == [names[0]] and missing_jobs(names) == []


def test_unique_keeps_one_record_per_configuration():
    a = item("exp1-a", "exp1", [run("k2+hq8s8", {"key": K2, "headq": hq(8)}, 4.0, 22.0)])
    b = item("exp2-controls", "exp2", [run("k2+hq8s8-query_pca", {"key": K2, "headq": hq(8)}, 4.0, 22.1)])
    other_cal = item("exp2-b", "exp2", [run("k2+hq8s8", {"key": K2, "headq": hq(8)}, 4.0, 23.0)])
    other_cal["spec"] = {"calibration_job": "another"}
    kept = unique(r for r in records(a, b, other_cal) if r["name"] != "dense")
    assert [(r["job"], r["name"]) for r in kept] == [("exp1-a", "k2+hq8s8"), ("exp2-b", "k2+hq8s8")]


def test_head_mean_and_sum_skip_missing_values():
    heads = [{"attn_kl": 1.0}, {"attn_kl": 3.0}, {"attn_kl": float("nan")}, {"key_mse": 2.0}]
    (rec,) = [
        r for r in records(item("x", "exp1", [run("k2", {"key": K2}, 3.0, 30.0, heads=heads)])) if r["heads"]
    ]
    assert head_mean(rec, "attn_kl") == 2.0 and head_sum(rec, "attn_kl") == 4.0
    assert head_mean(rec, "fisher") is None
