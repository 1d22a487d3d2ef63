"""Views of a results document, each checked against a direct computation on the document."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.dashboard import results as R
from app.dashboard.stats import paired_difference
from testkit.synthetic import make_results


@pytest.fixture(scope="module")
def doc() -> dict:
    return make_results(layers=3, heads=4, kv_heads=2, head_dim=8, window=10, n_runs=5)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), computed directly."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def test_head_matrix_matches_rows(doc):
    m = R.head_matrix(doc, "k2", "fisher")
    assert m.shape == (3, 4)
    for row in doc["heads"]:
        if row["run"] == "k2":
            assert m[row["layer"], row["head"]] == row["fisher"]


def test_head_matrix_missing_values_are_nan(doc):
    edited = {
        **doc,
        "heads": [r for r in doc["heads"] if not (r["run"] == "k2" and r["layer"] == 1 and r["head"] == 2)],
    }
    m = R.head_matrix(edited, "k2", "attn_kl")
    assert math.isnan(m[1, 2]) and np.isfinite(np.delete(m.ravel(), 1 * 4 + 2)).all()


def test_head_matrix_rejects_unknown_run_and_bad_model(doc):
    with pytest.raises(ValueError, match="run"):
        R.head_matrix(doc, "nope", "fisher")
    with pytest.raises(ValueError, match="model"):
        R.head_matrix({**doc, "model": {"layers": 0, "heads": 4}}, "k2", "fisher")


def test_metric_names_main_first(doc):
    names = R.metric_names(doc)
    assert names[:4] == list(R.MAIN_METRICS)
    assert set(names) == {k for k in doc["heads"][0] if k not in R.KEY_FIELDS}


def test_default_run_skips_dense(doc):
    assert R.run_names(doc)[0] == "dense" and R.default_run(doc) == "k2"
    assert R.default_run({"runs": []}) is None


def test_kv_head_of_follows_repeat_kv(doc):
    assert [R.kv_head_of(doc, h) for h in range(4)] == [0, 0, 1, 1]


def test_head_across_runs(doc):
    across = R.head_across_runs(doc, 2, 3)
    assert list(across) == R.run_names(doc)
    for row in doc["heads"]:
        if row["layer"] == 2 and row["head"] == 3:
            assert across[row["run"]]["attn_kl"] == row["attn_kl"]


def test_a_dense_run_without_head_rows_is_the_zero_reference(doc):
    """Evaluations store no head rows for the dense run (it reads the exact cache); the chart of one
    head across configurations still shows it, at 0 for every metric the others have."""
    stripped = {**doc, "heads": [r for r in doc["heads"] if r["run"] != "dense"]}
    across = R.head_across_runs(stripped, 2, 3)
    assert list(across) == R.run_names(doc) and R.is_dense(doc["runs"][0])
    assert across["dense"] == dict.fromkeys(across["k2"], 0.0) and across["k2"]["attn_kl"] > 0
    assert R.head_across_runs({**stripped, "heads": []}, 2, 3) == {}


def test_arrays(doc):
    assert R.a2_weights(doc, "k2", 1, 1) == doc["arrays"]["a2_weights"]["k2"][1][1]
    assert R.a2_weights(doc, "k2", 9, 0) is None and R.a2_weights(doc, "none", 0, 0) is None
    assert R.query_spectrum(doc, 2, 0) == doc["arrays"]["query_spectrum"][2][0]
    assert R.query_spectrum({"arrays": {}}, 0, 0) is None
    assert R.run_rank(doc, "k2-headq-r8") == 8 and R.run_rank(doc, "k2") is None


def test_perplexity_rows(doc):
    rows = R.perplexity_rows(doc)
    assert [r["run"] for r in rows] == R.run_names(doc)
    for row, run in zip(rows, doc["runs"], strict=True):
        assert row["perplexity"] == run["perplexity"] and row["excess"] == run["excess_perplexity"]
        assert (
            row["key_bits"] == run["effective_bits"]["key"] and row["excess_removed"] == run["excess_removed"]
        )
        assert row["perplexity_ci"] == run["perplexity_ci"]
        assert row["excess_removed_ci"] == run.get("excess_removed_ci")
    old = R.perplexity_rows(make_results(layers=2, heads=2, kv_heads=1, head_dim=4, uncertainty=False))
    assert all(r[f] is None for r in old for f in ("perplexity_ci", "excess_ci", "excess_removed_ci"))
    assert R.interval({"perplexity_ci": [1.0, None]}, "perplexity") is None


def test_synthetic_aggregates_follow_the_window_values(doc):
    runs = {r["name"]: r for r in doc["runs"]}
    for name, run in runs.items():
        means = R.window_means(doc, name)
        assert len(means) == doc["dataset"]["windows"] == len(doc["dataset"]["window_offsets"])
        assert run["perplexity"] == pytest.approx(math.exp(means.mean()), rel=1e-12)
        assert run["excess_perplexity"] == pytest.approx(run["perplexity"] - runs["dense"]["perplexity"])
        for field in ("perplexity", "excess_perplexity", "excess_removed"):
            if run.get(field) is not None and name != "dense":
                lo, hi = run[f"{field}_ci"]
                assert lo < run[field] < hi and run[f"{field}_se"] > 0
    assert runs["k2-headq-r8"]["excess_removed"] == pytest.approx(1 - 0.7 / 6.0)
    assert runs["k2"]["excess_perplexity_se"] < runs["k2"]["perplexity_se"]  # paired: difficulty cancels


def test_uncertainty_line(doc):
    line = R.uncertainty_line(doc)
    assert line.startswith("95% intervals: paired bootstrap over 16 windows (144 tokens scored). For a ")
    run = next(r for r in doc["runs"] if r.get("excess_removed_se"))
    expected = math.ceil(16 * (1.959963984540054 * run["excess_removed_se"] / 0.05) ** 2)
    assert f"±5 percentage points: about {expected:,} windows (from {run['name']}'s standard error" in line
    assert R.uncertainty_line(make_results(layers=2, heads=2, kv_heads=1, uncertainty=False)) is None


def test_same_windows_needs_equal_offsets_and_corpus(doc):
    other = make_results(layers=3, heads=4, kv_heads=2, head_dim=8, window=10, n_runs=5, seed=1)
    assert R.same_windows(doc, other)
    offsets = [1, *other["dataset"]["window_offsets"][1:]]
    assert not R.same_windows(doc, {**other, "dataset": {**other["dataset"], "window_offsets": offsets}})
    assert not R.same_windows(doc, {**other, "dataset": {**other["dataset"], "name": "wiki"}})
    old = make_results(layers=3, heads=4, kv_heads=2, head_dim=8, window=10, n_runs=5, uncertainty=False)
    assert not R.same_windows(old, old) and R.window_means(old, "k2") is None


def test_perplexity_difference_in_words(doc):
    text = R.perplexity_difference(doc, "k2", doc, "k2-headq-r8", same_doc=True)
    diff = paired_difference(R.window_means(doc, "k2"), R.window_means(doc, "k2-headq-r8"))
    assert diff.value == pytest.approx(5.3)
    assert text == (f"Perplexity A − B = {diff.value:.4g} [{diff.ci[0]:.4g}, {diff.ci[1]:.4g}] "
                    "(95% interval, paired bootstrap over 16 windows).")
    same = R.perplexity_difference(doc, "k2", doc, "k2", same_doc=True)
    assert same.startswith("Perplexity A − B = 0 [0, 0]")
    assert same.endswith(": not distinguishable on these windows.")
    other = make_results(layers=3, heads=4, kv_heads=2, head_dim=8, window=10, n_runs=5, seed=1)
    assert "[" in R.perplexity_difference(doc, "k2", other, "k2-headq-r8-key_pca", same_doc=False)
    moved = {**other, "dataset": {**other["dataset"], "window_offsets": [0] * 16}}
    assert R.perplexity_difference(doc, "k2", moved, "k2-headq-r8-key_pca", same_doc=False) == (
        "Perplexity A − B = 2.1: the runs were measured on different windows, "
        "so no paired comparison is possible."
    )
    old = make_results(layers=3, heads=4, kv_heads=2, head_dim=8, window=10, n_runs=5, uncertainty=False)
    assert R.perplexity_difference(old, "k2", old, "dense", same_doc=True) == (
        "Perplexity A − B = 6: no per-window values (an older document), so no interval."
    )
    assert R.perplexity_difference(doc, "k2", doc, "nope", same_doc=True) is None


def test_predictor_points_keep_positive_finite(doc):
    pts = R.predictor_points(doc)
    expected = [r for r in doc["heads"] if all(r[m] > 0 for m in ("fisher", "key_mse", "attn_kl"))]
    assert len(pts["attn_kl"]) == len(expected) and "dense" not in set(pts["run"].tolist())
    only = R.predictor_points(doc, ["k2"])
    assert set(only["run"].tolist()) == {"k2"} and len(only["fisher"]) == 12


def test_rank_correlations_match_direct_spearman(doc):
    pts = R.predictor_points(doc)
    rho = R.rank_correlations(pts)
    for predictor in ("fisher", "key_mse"):
        direct = np.corrcoef(_ranks(pts[predictor]), _ranks(pts["attn_kl"]))[0, 1]
        assert rho[predictor] == pytest.approx(direct, abs=1e-12)
    assert rho["fisher"] > rho["key_mse"]  # the synthetic data carries the paper's claim
    few = {k: v[:2] for k, v in pts.items()}
    assert R.rank_correlations(few) == {"fisher": None, "key_mse": None}


def test_window_correlations_follow_the_selection(doc):
    pooled = doc["rank_correlations"]
    with_heads = sorted(set(R.predictor_points(doc)["run"].tolist()))
    assert R.window_correlations(doc, with_heads) == {m: pooled[m]["ci"] for m in R.PREDICTORS}
    k2 = next(r for r in doc["runs"] if r["name"] == "k2")["rank_correlations"]
    assert R.window_correlations(doc, ["k2"]) == {m: k2[m]["ci"] for m in R.PREDICTORS}
    assert R.window_correlations(doc, ["k2", "k4"]) is None  # neither one run nor the pooled set
    old = make_results(layers=3, heads=4, kv_heads=2, head_dim=8, window=10, uncertainty=False)
    assert R.window_correlations(old, ["k2"]) is None and R.correlation_rows(old) == []
    rows = {r["run"]: r for r in R.correlation_rows(doc)}
    assert "dense" not in rows and rows["k2"]["fisher"] == k2["fisher"]["rho"]
    assert rows["k2"]["key_mse_ci"] == k2["key_mse"]["ci"] and rows["k2"]["heads"] == k2["fisher"]["heads"]


def test_budget_split_kinds_and_bits():
    full = make_results(layers=2, heads=2, kv_heads=1, head_dim=4, window=4)
    key_only, key_value = R.budget_split(full)
    kinds = {r["run"]: r["kind"] for r in key_only + key_value}
    assert kinds == {"k2": "plain", "k2-headq-r8": "HeadQ", "k2-headq-r8-wrongsign": "HeadQ",
                     "k2-headq-r8-key_pca": "HeadQ", "k4": "plain", "k2-v2": "plain",
                     "k2-headq-r8-v2-a2online": "HeadQ"}
    assert {r["run"] for r in key_value} == {"k2-v2", "k2-headq-r8-v2-a2online"}
    by_name = {r["name"]: r for r in full["runs"]}
    for row in key_only + key_value:
        bits = by_name[row["run"]]["effective_bits"]
        assert row["key_bits"] == bits["key"] and row["excess"] == by_name[row["run"]]["excess_perplexity"]
        assert row["mean_bits"] == (bits["key"] + bits["value"]) / 2


def test_dense_side_note_names_the_unquantized_side():
    doc = make_results(layers=2, heads=2, kv_heads=1, head_dim=8, window=8, n_runs=8)
    runs = {r["name"]: r["spec"] for r in doc["runs"]}
    key_only = next(n for n, s in runs.items() if "key" in s and "value" not in s)
    both = next(n for n, s in runs.items() if "key" in s and "value" in s)
    assert "values are not quantized" in R.dense_side_note(doc, key_only, "value_a2")
    assert R.dense_side_note(doc, key_only, "attn_kl") is None
    assert R.dense_side_note(doc, both, "readout_err") is None
    assert R.dense_side_note(doc, both, "entropy") is None
