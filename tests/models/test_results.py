"""Results rows: perplexity, excess and the share of excess HeadQ removes, from hand-made sums."""

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
    nll = {
        "dense": 10 * math.log(20.0),
        "k2": 10 * math.log(30.0),
        "k2_h": 10 * math.log(22.0),
        "k4_h": 10 * math.log(21.0),
    }
    rows = {r["name"]: r for r in run_rows(RUNS, nll, 10, BITS)}
    assert rows["dense"]["perplexity"] == pytest.approx(20.0) and rows["dense"]["excess_perplexity"] == 0.0
    assert rows["k2"]["excess_perplexity"] == pytest.approx(10.0) and rows["k2"]["excess_removed"] is None
    assert rows["k2_h"]["excess_removed"] == pytest.approx(1 - 2.0 / 10.0)
    assert rows["k4_h"]["excess_removed"] is None  # no 4-bit run without HeadQ to compare with
    assert rows["k2_h"]["nll"] == pytest.approx(math.log(22.0)) and rows["k2_h"]["tokens"] == 10
    assert base_run_name(RUNS[2], RUNS) == "k2"


def test_without_dense_run_no_excess():
    nll = {"k2": 1.0, "k2_h": 0.5}
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
