"""The engine formats in the decode-exact evaluator: perplexity equals a real token-by-token decode
loop (tests.models.test_evaluate's), HeadQ corrects any of them, and the results document shows
each run's format in its spec and its effective bits from the one budget function."""

import pytest

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.evaluation.windows import corpus_windows
from headq_core.method.budget import effective_bits
from tests.models.test_evaluate import _decode_loop_nll
from tests.models.tiny import loaded

SPEC = CorpusSpec(split="eval")
D = 32  # head_dim of the tiny Llama below: one llama.cpp block per token
Q4_0 = QuantConfig(format="q4_0", bits=4, axis="per_token", residual=2)
Q8_0 = QuantConfig(format="q8_0", bits=8, axis="per_token")
FP8 = QuantConfig(format="fp8_e4m3", bits=8, axis="per_token", fp8_scale="token", residual=1)
E5M2 = QuantConfig(format="fp8_e5m2", bits=8, axis="per_token", fp8_scale="unit")
HAD_K2 = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=2, rotation="hadamard",
                     rotation_seed=1)
INT4_SYM = QuantConfig(bits=4, axis="per_token", group_size=D, symmetric=True)
Q5_1 = QuantConfig(format="q5_1", bits=5, axis="per_token", rotation="hadamard")
RUNS = [RunSpec("dense"), RunSpec("q4_0", key=Q4_0, value=Q8_0), RunSpec("fp8", key=FP8, value=E5M2),
        RunSpec("hadamard+k2", key=HAD_K2), RunSpec("int4-sym", key=INT4_SYM, value=INT4_SYM),
        RunSpec("hadamard+q5_1", key=Q5_1, value=Q4_0)]


def test_formats_are_decode_exact_and_documented():
    lm = loaded("llama", head_dim=D)
    doc = evaluate(lm, SPEC, RUNS, window=12, max_tokens=24, heads=True)
    windows = corpus_windows(lm.tokenizer, SPEC, 12, 24).ids
    rows = {r["name"]: r for r in doc["runs"]}
    for run in RUNS:
        nll = sum(_decode_loop_nll(lm, w, run.key, run.value) for w in windows) / (2 * 11)
        assert rows[run.name]["nll"] == pytest.approx(nll, rel=1e-5), run.name
        want = {"key": effective_bits(run.key, D), "value": effective_bits(run.value, D)}
        assert rows[run.name]["effective_bits"] == pytest.approx(want)
    assert rows["q4_0"]["spec"]["key"]["format"] == "q4_0" and rows["q4_0"]["effective_bits"]["key"] == 4.5
    assert rows["q4_0"]["effective_bits"]["value"] == 8.5
    assert rows["fp8"]["effective_bits"] == {"key": 9.0, "value": 8.0}  # float32 scale per 32-wide token
    assert rows["hadamard+k2"]["spec"]["key"]["rotation"] == "hadamard"
    assert "format" not in rows["hadamard+k2"]["spec"]["key"]  # the default stays out of the spec
    assert rows["int4-sym"]["effective_bits"]["key"] == 4.5  # codes + an fp16 scale per 32 values
    assert {h["run"] for h in doc["heads"]} >= {"q4_0", "fp8", "hadamard+k2"}  # per-head metrics


def test_headq_corrects_an_engine_format():
    lm = loaded("llama", head_dim=D, initializer_range=0.2)
    k = QuantConfig(format="q4_1", bits=4, axis="per_token")
    runs = [RunSpec("dense"), RunSpec("q4_1", key=k),
            RunSpec("q4_1+headq", key=k, headq=HeadQConfig(rank=D, basis="random", side_bits=16))]
    rows = {r["name"]: r for r in evaluate(lm, SPEC, runs, window=12, max_tokens=24, heads=False)["runs"]}
    # a full-rank fp16 side code restores the keys: the excess (almost) vanishes
    excess = {name: abs(rows[name]["nll"] - rows["dense"]["nll"]) for name in ("q4_1", "q4_1+headq")}
    assert excess["q4_1+headq"] < 0.1 * excess["q4_1"]
    assert rows["q4_1+headq"]["effective_bits"]["key"] == pytest.approx(5.0 + D * 16 / D)


@pytest.mark.parametrize(("cfg", "message"), [
    (QuantConfig(format="q4_0", bits=4, axis="per_token", group_size=32),
     r"key.format: 'q4_0' needs a head_dim"),
    (QuantConfig(bits=2, group_size=4, rotation="hadamard"),
     r"key.rotation: a Hadamard rotation needs a power"),
])
def test_a_format_the_head_dim_cannot_hold_is_refused_before_any_window(cfg, message):
    """head_dim 48: not a multiple of 32 (llama.cpp blocks), not a power of two (Hadamard); the
    evaluator names the field and the run before reading the corpus, not at the first layer."""
    lm = loaded("llama", head_dim=48)
    with pytest.raises(ValueError, match=message + r".*\(run 'r'\)"):
        evaluate(lm, CorpusSpec(split="eval"), [RunSpec("r", key=cfg)], window=16, max_tokens=32)
