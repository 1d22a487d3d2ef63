"""Run page views checked against direct computations on the synthetic document."""

from __future__ import annotations

import numpy as np
import pytest

from app.dashboard import run_views as V
from app.dashboard.common import linked_run
from testkit.synthetic import make_results


@pytest.fixture(scope="module")
def doc() -> dict:
    return make_results(layers=3, heads=4, kv_heads=2, head_dim=8, window=16, windows=8)


def _row(doc: dict, name: str) -> dict:
    return next(r for r in doc["runs"] if r["name"] == name)


def test_run_summary_gives_numbers_intervals_and_bits(doc):
    r = _row(doc, "k2-headq-r8")
    ppl, excess, removed, bits = V.run_summary(doc, "k2-headq-r8")
    lo, hi = r["perplexity_ci"]
    assert ppl == f"perplexity {r['perplexity']:.4g} [{lo:.4g}, {hi:.4g}]"
    assert excess.startswith(f"excess {r['excess_perplexity']:.3g} [")
    assert removed.startswith(f"share removed {r['excess_removed']:.1%} [{r['excess_removed_ci'][0]:.1%}")
    assert bits == "effective bits K 4 / V 16"
    assert V.run_summary(doc, "nope") == []


def test_run_summary_without_intervals():
    old = make_results(layers=2, heads=2, kv_heads=1, uncertainty=False)
    parts = V.run_summary(old, "k2")
    assert parts[0] == f"perplexity {_row(old, 'k2')['perplexity']:.4g}" and "[" not in parts[1]


def test_coverage_line_reads_the_dataset_block(doc):
    d = doc["dataset"]
    line = V.coverage_line(doc)
    assert line is not None
    assert line.startswith("Per-head metrics: all 8 windows of 16 tokens (about 128 tokens).")
    assert f"{d['tokens_scored']:,} tokens scored over 8 windows, placed spread." in line
    part = {**doc, "dataset": {**d, "head_windows": 2}}
    assert "the first 2 of 8 windows of 16 tokens (about 32 tokens)" in (V.coverage_line(part) or "")
    assert V.coverage_line({"dataset": {}}) is None


def test_kept_fraction_from_keep_fraction_or_target_bits(doc):
    assert V.kept_fraction(doc, "k2-headq-r8-v2-a2online") == 0.1 and V.kept_fraction(doc, "k2") is None
    spec = {"value": {"bits": 2}, "value_policy": {"target_bits": 3.5, "high_bits": 8, "keep_fraction": None}}
    assert V.kept_fraction({"runs": [{"name": "t", "spec": spec}]}, "t") == pytest.approx(1.5 / 6)


def test_a2_ranked_is_the_top_k_and_its_weight():
    w = np.random.default_rng(0).lognormal(size=1024)
    out = V.a2_ranked(w.tolist(), 0.1)
    top = np.sort(np.argsort(w)[::-1][:102])
    assert out["kept"] == top.tolist()
    assert out["kept_weight"] == pytest.approx(w[top].sum() / w.sum())
    assert out["cumulative"][-1] == pytest.approx(1.0) and np.all(np.diff(out["cumulative"]) >= 0)
    assert V.a2_ranked([1.0, 2.0], None)["kept"] == []


def test_shared_range_spans_every_panel():
    a, b = np.array([[0.0, 2.0], [np.nan, 1.0]]), np.array([[5.0, 0.5]])
    assert V.shared_range([a, b]) == (0.0, 5.0)
    assert V.shared_range([a, b], log=True) == pytest.approx((np.log10(0.5), np.log10(5.0)))
    assert V.shared_range([np.full((2, 2), np.nan)]) is None


def test_linked_run_says_when_the_run_is_unknown():
    assert linked_run("b", ["a", "b"], "a") == ("b", None) and linked_run(None, ["a"], "a") == ("a", None)
    chosen, note = linked_run("zz", ["a"], "a", "run_b")
    assert chosen == "a" and note == "run_b: 'zz' is not a configuration of this job; showing a instead."
