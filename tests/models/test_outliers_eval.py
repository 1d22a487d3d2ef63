"""Dense-and-sparse outliers in the decode-exact evaluator and ``HeadQCache``: the evaluator's
perplexity equals a token-by-token decode loop's and the cache's (its dequantizing side), and the
results rows carry the outliers' bits."""

import math

import pytest

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.evaluation.windows import corpus_windows
from headq_core.method.budget import effective_bits
from headq_core.runtime.cache import HeadQCache
from headq_core.runtime.format_side import FormatSide
from tests.models.test_cache import _decode_nll
from tests.models.test_evaluate import _decode_loop_nll
from tests.models.tiny import loaded

SPEC = CorpusSpec(split="eval")
KEY = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=3, outliers=0.05)
VALUE = QuantConfig(bits=2, axis="per_token", group_size=8, outliers=0.05)


def test_outliers_are_decode_exact_in_the_evaluator_and_the_cache():
    lm = loaded("llama", head_dim=32, initializer_range=0.2)
    plain = RunSpec("kivi2", key=QuantConfig(bits=2, axis="per_channel", group_size=4, residual=3),
                    value=QuantConfig(bits=2, axis="per_token", group_size=8))
    run = RunSpec("kivi2+outliers", key=KEY, value=VALUE)
    doc = evaluate(lm, SPEC, [RunSpec("dense"), plain, run], window=24, max_tokens=48, heads=True)
    rows = {r["name"]: r for r in doc["runs"]}
    windows = corpus_windows(lm.tokenizer, SPEC, 24, 48).ids
    nll = sum(_decode_loop_nll(lm, w, KEY, VALUE) for w in windows) / (2 * 23)
    assert rows[run.name]["nll"] == pytest.approx(nll, rel=1e-5)
    assert rows[run.name]["effective_bits"] == pytest.approx(
        {"key": 2 + 32 / 4 + 7 * 32 / 128, "value": 2 + 32 / 8 + 2 * 32 / 32})
    assert rows[run.name]["effective_bits"]["key"] == effective_bits(KEY, 32)
    assert rows[run.name]["spec"]["key"]["outliers"] == 0.05
    with_hq = RunSpec("hq", key=KEY, value=VALUE, headq=HeadQConfig(rank=2, basis="random"))
    one = evaluate(lm, SPEC, [with_hq], window=24, max_tokens=24, heads=False)
    cache = HeadQCache.from_run(with_hq, None, lm.info)
    ppl = one["runs"][0]["perplexity"]
    assert math.exp(_decode_nll(lm, windows[0], cache)) == pytest.approx(ppl, rel=1e-5)
    assert isinstance(cache.quant_layers[0].key_side, FormatSide)
