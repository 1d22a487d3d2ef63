"""The tokens an A² value policy really keeps, stored per (layer, KV head, window position) as the
share of windows keeping them (``arrays.a2_keep_rate``), so the dashboard marks real kept tokens."""

from __future__ import annotations

import pytest

from headq_core.config import QuantConfig, RunSpec, ValuePolicyConfig
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_spec.results import ResultsDocument
from tests.models.tiny import loaded

K2 = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=0)
V2 = QuantConfig(bits=2, axis="per_token", group_size=4, residual=0)
WINDOW, WINDOWS = 32, 2


def _rates(attention: str, mode: str) -> dict:
    policy = ValuePolicyConfig(mode=mode, keep_fraction=0.25)
    runs = [RunSpec("kv2", key=K2, value=V2), RunSpec("kv2_a2", key=K2, value=V2, value_policy=policy)]
    doc = evaluate(loaded("llama"), CorpusSpec(split="eval"), runs, window=WINDOW,
                   max_tokens=WINDOW * WINDOWS, attention=attention)
    ResultsDocument.model_validate(doc)
    return doc["arrays"]["a2_keep_rate"]


@pytest.mark.parametrize("mode", ["oracle", "online"])
def test_keep_rates_are_window_shares_equal_on_both_attention_paths(mode):
    rates = _rates("materialised", mode)
    assert list(rates) == ["kv2_a2"]  # a run without a policy keeps nothing
    assert rates == _rates("blockwise", mode)
    for layer in rates["kv2_a2"]:
        for per_position in layer:
            assert len(per_position) == WINDOW
            assert all(r in (0.0, 0.5, 1.0) for r in per_position)  # kept in 0, 1 or 2 of 2 windows
            if mode == "oracle":  # exactly round(0.25 * 32) = 8 tokens a window, wherever they are
                assert sum(per_position) * WINDOWS == pytest.approx(8 * WINDOWS)
            else:  # the running quantile keeps the first token and about a quarter of the rest
                assert per_position[0] == 1.0 and 0 < sum(per_position) < WINDOW / 2
