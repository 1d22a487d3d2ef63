"""Results rows: perplexity, excess and the share of excess HeadQ removes, from hand-made sums, and
their paired standard errors against the delta method computed here."""

import json
import math

import pytest
import torch

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.results import base_run_name, compact_list, run_rows, versions

K2 = QuantConfig(bits=2)
RUNS = [
    RunSpec("dense"),
    RunSpec("k2", key=K2),
    RunSpec("k2_h", key=K2, headq=HeadQConfig(rank=4)),
    RunSpec("k4_h", key=QuantConfig(bits=4), headq=HeadQConfig(rank=4)),
]
BITS = {r.name: {"key": 16.0, "value": 16.0} for r in RUNS}


def test_excess_and_share_removed():
    nll = {name: torch.tensor([10 * math.log(ppl)])
           for name, ppl in (("dense", 20.0), ("k2", 30.0), ("k2_h", 22.0), ("k4_h", 21.0))}
    rows = {r["name"]: r for r in run_rows(RUNS, nll, 10, BITS)}
    assert rows["dense"]["perplexity"] == pytest.approx(20.0) and rows["dense"]["excess_perplexity"] == 0.0
    assert rows["k2"]["excess_perplexity"] == pytest.approx(10.0) and rows["k2"]["excess_removed"] is None
    assert rows["k2_h"]["excess_removed"] == pytest.approx(1 - 2.0 / 10.0)
    assert rows["k4_h"]["excess_removed"] is None  # no 4-bit run without HeadQ to compare with
    assert rows["k2_h"]["nll"] == pytest.approx(math.log(22.0)) and rows["k2_h"]["tokens"] == 10
    assert base_run_name(RUNS[2], RUNS) == "k2"


def test_without_dense_run_no_excess():
    nll = {"k2": torch.tensor([1.0]), "k2_h": torch.tensor([0.5])}
    rows = run_rows(RUNS[1:3], nll, 1, BITS)
    assert all(r["excess_perplexity"] is None and r["excess_removed"] is None for r in rows)


def test_versions_are_named():
    v = versions()
    assert set(v) == {"headq_lab", "torch", "transformers", "python"} and v["torch"].startswith("2.")


def test_compact_list_keeps_shape_and_six_significant_digits():
    """Result arrays keep six significant digits: half the JSON, nothing float32 sums carry lost."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 4, 5, generator=gen) * 10.0 ** torch.randint(-8, 3, (3, 4, 5), generator=gen)
    got = torch.tensor(compact_list(x), dtype=torch.float64)
    assert got.shape == x.shape
    torch.testing.assert_close(got, x.double(), rtol=5e-6, atol=0)
    assert len(json.dumps(compact_list(x))) < 0.7 * len(json.dumps(x.double().tolist()))
    assert compact_list(torch.tensor([])) == []


def _paired_windows(n=64, seed=0):
    """Per-window NLL sums of 100 tokens: text difficulty shared by all runs, small run noise."""
    gen = torch.Generator().manual_seed(seed)
    difficulty = 3.0 + 0.4 * torch.randn(n, generator=gen, dtype=torch.float64)
    noise = lambda scale: scale * torch.randn(n, generator=gen, dtype=torch.float64)  # noqa: E731
    mean = {"dense": difficulty, "k2": difficulty + 0.10 + noise(0.03),
            "k2_h": difficulty + 0.04 + noise(0.02)}
    return {name: 100 * m for name, m in mean.items()}, mean


def test_paired_standard_errors_match_the_delta_method():
    sums, mean = _paired_windows()
    rows = {r["name"]: r for r in run_rows(RUNS[:3], sums, 100, BITS, seed=3)}
    n = len(mean["dense"])
    for name in ("dense", "k2"):  # perplexity: SE(exp(M)) = exp(M) sd(m) / sqrt(n)
        expected = math.exp(mean[name].mean()) * mean[name].std().item() / math.sqrt(n)
        assert rows[name]["perplexity_se"] == pytest.approx(expected, rel=0.1)
    # excess = exp(M_k2) - exp(M_dense): gradient g = (exp(M_k2), -exp(M_dense)) on their covariance
    pair = torch.stack([mean["k2"], mean["dense"]])
    g = torch.tensor([math.exp(mean["k2"].mean()), -math.exp(mean["dense"].mean())], dtype=torch.float64)
    expected = math.sqrt(g @ torch.cov(pair) @ g / n)
    assert rows["k2"]["excess_perplexity_se"] == pytest.approx(expected, rel=0.1)
    # pairing: the excess is known far better than either perplexity
    assert rows["k2"]["excess_perplexity_se"] < 0.2 * rows["k2"]["perplexity_se"]
    for row in rows.values():
        for field in ("perplexity", "excess_perplexity", "excess_removed"):
            if row.get(f"{field}_ci") is not None:
                lo, hi = row[f"{field}_ci"]
                assert lo <= row[field] <= hi
    assert rows["k2_h"]["excess_removed_se"] > 0 and rows["k2_h"]["window_tokens"] == 100
    assert rows["k2_h"]["window_nll"] == pytest.approx(sums["k2_h"].tolist())


def test_bootstrap_is_seeded():
    sums, _ = _paired_windows()
    one, two = (run_rows(RUNS[:3], sums, 100, BITS, seed=5) for _ in range(2))
    assert one == two and one != run_rows(RUNS[:3], sums, 100, BITS, seed=6)


def test_windows_for_a_half_width():
    from headq_spec.uncertainty import windows_for_half_width

    assert windows_for_half_width(se=0.5, n_windows=16, half_width=0.5) == 62  # 16 * 1.96**2
    assert windows_for_half_width(se=0.5, n_windows=16, half_width=1.0) == 16
