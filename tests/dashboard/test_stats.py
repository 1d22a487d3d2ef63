"""The dashboard's own bootstrap intervals, each checked against a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from app.dashboard.stats import CONFIDENCE, paired_difference, spearman_interval


def _windows(n: int = 200, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Mean NLL per token of ``n`` windows of two runs sharing a text difficulty."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(3.0, 0.3, n)
    return difficulty + 0.05 + rng.normal(0, 0.02, n), difficulty + rng.normal(0, 0.02, n)


def test_paired_difference_matches_a_direct_loop():
    a, b = _windows(60)
    got = paired_difference(a, b)
    idx = np.random.default_rng(0).integers(0, 60, (2000, 60))
    diffs = [math.exp(sum(a[i]) / 60) - math.exp(sum(b[i]) / 60) for i in idx]
    assert got.value == pytest.approx(math.exp(a.mean()) - math.exp(b.mean()), rel=1e-12)
    assert got.se == pytest.approx(np.std(diffs, ddof=1), rel=1e-9)
    assert got.ci == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])), rel=1e-9)
    assert got == paired_difference(a, b) and got != paired_difference(a, b, seed=1)  # seeded


def test_identical_windows_give_a_degenerate_interval():
    a, b = np.full(20, 3.1), np.full(20, 3.0)
    got = paired_difference(a, b)
    point = math.exp(3.1) - math.exp(3.0)
    assert got.value == pytest.approx(point) and got.ci == pytest.approx((point, point))
    assert got.se == pytest.approx(0.0, abs=1e-9) and not got.contains_zero
    same = paired_difference(a, a)
    assert same.value == 0.0 and same.ci == (0.0, 0.0) and same.contains_zero


def test_se_agrees_with_the_delta_method():
    a, b = _windows(400)
    got = paired_difference(a, b)
    # linearised: exp(mean a) * a_w - exp(mean b) * b_w per window, its standard error over windows
    d = math.exp(a.mean()) * a - math.exp(b.mean()) * b
    delta = d.std(ddof=1) / math.sqrt(len(d))
    assert got.se == pytest.approx(delta, rel=0.15)
    assert got.ci[0] < got.value < got.ci[1] and not got.contains_zero
    # pairing matters: the unpaired error is far larger than the paired one
    unpaired = math.hypot(math.exp(a.mean()) * a.std(ddof=1), math.exp(b.mean()) * b.std(ddof=1))
    assert got.se < 0.2 * unpaired / math.sqrt(len(a))


def test_paired_difference_refuses_unequal_windows():
    with pytest.raises(ValueError, match="windows"):
        paired_difference(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="windows"):
        paired_difference(np.zeros(0), np.zeros(0))


def test_spearman_interval_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.lognormal(0, 1, 150)
    y = x * rng.lognormal(0, 0.8, 150)
    rho = spearmanr(x, y).statistic
    ci = spearman_interval(x, y)
    assert ci is not None and ci[0] < rho < ci[1] and ci[1] - ci[0] < 0.3
    assert spearman_interval(x, y) == ci and spearman_interval(x, y, seed=5) != ci
    assert spearman_interval(x[:2], y[:2]) is None


def test_spearman_interval_replicates_match_scipy():
    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, 30).astype(float), rng.normal(size=30)  # ties in x
    idx = np.random.default_rng(0).integers(0, 30, (1000, 30))
    direct = [spearmanr(x[i], y[i]).statistic for i in idx]
    tail = (1 - CONFIDENCE) / 2
    expected = np.quantile(direct, [tail, 1 - tail])
    assert spearman_interval(x, y) == pytest.approx(tuple(expected), rel=1e-9)
