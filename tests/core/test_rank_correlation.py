"""Spearman's rho of per-head metrics and its bootstrap over windows, against direct computations."""

import pytest
import torch
from scipy.stats import spearmanr

from headq_core.evaluation.metrics import HeadMetrics, metrics_from_state
from headq_core.evaluation.rank_correlation import POOLED, average_ranks, head_rank_correlations, spearman
from headq_core.evaluation.uncertainty import resample_indices
from tests.core.test_metrics import logits, random_case

HQ, HKV, LAYERS, WINDOWS = 4, 2, 3, 5


def window_case(run: int, window: int, layer: int):
    """Dense and perturbed logits and key pair of one (run, window, layer); noise grows with layer."""
    q, k, k_hat, _, _ = random_case(1000 * run + 10 * window + layer, 1, HQ, HKV, 6, 6, 4,
                                    noise=0.1 + 0.3 * layer + 0.05 * window)
    return k, k_hat, logits(q, k, 0.5), logits(q, k_hat, 0.5)


def accumulate(run: int, windows: list[int], layer: int) -> HeadMetrics:
    acc = HeadMetrics(HQ, HKV)
    for w in windows:
        k, k_hat, s, s_hat = window_case(run, w, layer)
        acc.add_tensor_error("key_mse", k, k_hat)
        acc.add_logits(s, s_hat)
    return acc


def stacked(run: int) -> dict[str, torch.Tensor]:
    """What HeadAccumulator.stacked_states gives: one state per window, name -> [windows, layers, ...]."""
    states = [[accumulate(run, [w], layer).state() for layer in range(LAYERS)] for w in range(WINDOWS)]
    return {name: torch.stack([torch.stack([st[name] for st in per_layer]) for per_layer in states])
            for name in states[0][0]}


def direct_rho(runs: list[int], windows: list[int], predictor: str) -> float:
    """rho over every head of ``runs`` from accumulators fed ``windows`` (repeats included)."""
    x, y = [], []
    for run in runs:
        for layer in range(LAYERS):
            result = accumulate(run, windows, layer).result()
            x += result[predictor].tolist()
            y += result["attn_kl"].tolist()
    return float(spearmanr(x, y).statistic)


def test_ranks_and_rho_match_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (7, 40), generator=gen).double()  # many ties
    y = x + torch.randint(0, 4, (7, 40), generator=gen).double()
    from scipy.stats import rankdata

    torch.testing.assert_close(average_ranks(x), torch.tensor(rankdata(x.numpy(), axis=1)))
    want = torch.tensor([spearmanr(a, b).statistic for a, b in zip(x.numpy(), y.numpy(), strict=True)])
    torch.testing.assert_close(spearman(x, y), want.double())


def test_states_add_up_to_one_accumulator():
    states = stacked(0)
    summed = metrics_from_state({k: v.sum(0)[1] for k, v in states.items()}, HQ)
    whole = accumulate(0, list(range(WINDOWS)), 1).result()
    for name, value in whole.items():
        torch.testing.assert_close(summed[name], value)


@pytest.mark.parametrize("predictor", ["fisher", "key_mse"])
def test_point_rho_and_one_resample_match_direct_computation(predictor):
    states = {"a": stacked(0), "b": stacked(1)}
    draw = [3, 3, 0, 4, 1]  # one resample of the windows, with a repeat
    out = head_rank_correlations(states, HQ, torch.tensor([draw] * 20))
    assert out["a"][predictor]["rho"] == pytest.approx(direct_rho([0], list(range(WINDOWS)), predictor))
    assert out[POOLED][predictor]["rho"] == pytest.approx(direct_rho([0, 1], list(range(WINDOWS)), predictor))
    assert out["a"][predictor]["ci"] == pytest.approx([direct_rho([0], draw, predictor)] * 2)
    assert out[POOLED][predictor]["ci"] == pytest.approx([direct_rho([0, 1], draw, predictor)] * 2)
    assert out["a"][predictor]["heads"] == LAYERS * HQ


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    states = {"a": stacked(0)}
    first = head_rank_correlations(states, HQ, resample_indices(WINDOWS, seed=5))
    again = head_rank_correlations(states, HQ, resample_indices(WINDOWS, seed=5))
    other = head_rank_correlations(states, HQ, resample_indices(WINDOWS, seed=6))
    assert first == again and first != other
    assert POOLED not in first  # one run: nothing to pool
    lo, hi = first["a"]["fisher"]["ci"]
    assert lo <= first["a"]["fisher"]["rho"] <= hi and first["a"]["fisher"]["se"] > 0


def test_one_window_gives_rho_without_interval():
    states = {"a": {k: v[:1] for k, v in stacked(0).items()}}
    out = head_rank_correlations(states, HQ, resample_indices(1, seed=0))
    assert out["a"]["fisher"]["rho"] is not None
    assert out["a"]["fisher"]["ci"] is None and out["a"]["fisher"]["se"] is None
