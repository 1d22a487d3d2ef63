"""The window-count study re-aggregates the windows of one large evaluation: each subset must be
what an evaluation of that many windows reads, for spread and contiguous placement."""

import pytest

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.calibrate import calibrate
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from studies.window_count import subset_rows
from tests.models.tiny import loaded

K2 = QuantConfig(bits=2, axis="per_channel", group_size=8, residual=0)
RUNS = [RunSpec("dense"), RunSpec("k2", key=K2), RunSpec("k2+headq4", key=K2, headq=HeadQConfig(rank=4))]


@pytest.mark.parametrize("placement", ["spread", "contiguous"])
def test_subsets_are_the_smaller_evaluations(placement):
    lm = loaded("llama")
    cal = calibrate(lm, CorpusSpec(split="calibration"), window=24, max_tokens=48, rank=4)
    spec = CorpusSpec(split="eval")
    big = evaluate(lm, spec, RUNS, cal, window=24, max_tokens=8 * 24, placement=placement, heads=False)
    small = evaluate(lm, spec, RUNS, cal, window=24, max_tokens=2 * 24, placement=placement, heads=False)
    picked = subset_rows(big, 2, RUNS)
    for want, got in zip(small["runs"], picked, strict=True):
        assert got["window_nll"] == pytest.approx(want["window_nll"], rel=1e-6)
        for field in ("perplexity", "excess_perplexity", "excess_removed"):
            for key in (field, f"{field}_ci"):
                assert (got.get(key) is None) == (want.get(key) is None)
                assert got.get(key) is None or got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-12)
    assert picked[2]["excess_removed"] is not None
