"""HeadQCache: a token-by-token decode loop gives the teacher-forced evaluator's perplexity (also
with a sliding window and a logit softcap: without the model config the cache keeps every token, the
model's mask hides those outside the window; tests/models/test_sliding_cache.py gives it the config);
it works with generate(); it holds packed codes (fewer bytes than a dense cache)."""

import math

import pytest
import torch

from headq_core.config import HeadQConfig, QuantConfig, RunSpec, ValuePolicyConfig
from headq_core.evaluation.calibrate import calibrate
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.evaluation.windows import corpus_windows
from headq_core.models.calls import cache_kwargs
from headq_core.runtime.cache import HeadQCache
from tests.models.tiny import loaded

K2 = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=3)
V2 = QuantConfig(bits=2, axis="per_token", group_size=4, residual=2)
SPEC = CorpusSpec(split="eval")


def _decode_nll(lm, ids, cache):
    """Mean NLL of ids[1:] from a greedy-free decode loop, one token per forward."""
    total = 0.0
    with torch.no_grad():
        for t in range(ids.shape[0] - 1):
            step = lm.model(ids[None, t : t + 1], use_cache=True, **cache_kwargs(lm.model, cache))
            logits = step.logits[0, -1]
            total -= torch.log_softmax(logits.double(), -1)[ids[t + 1]].item()
    return total / (ids.shape[0] - 1)


def _check_same_perplexity(lm, run, calibration, window, make_cache):
    doc = evaluate(lm, SPEC, [run], calibration, window=window, max_tokens=window, heads=False)
    ids = corpus_windows(lm.tokenizer, SPEC, window, window).ids[0]
    cache = make_cache()
    nll = _decode_nll(lm, ids, cache)
    assert math.exp(nll) == pytest.approx(doc["runs"][0]["perplexity"], rel=1e-3)
    return cache


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "starcoder2"])
def test_decode_loop_matches_evaluator(family):
    lm = loaded(family)
    cal = calibrate(lm, CorpusSpec(split="calibration"), window=16, max_tokens=32, rank=4)
    headq = HeadQConfig(rank=4, side_bits=8)
    run = RunSpec("kv2_headq", key=K2, value=V2, headq=headq)
    cache = _check_same_perplexity(
        lm, run, cal, 24, lambda: HeadQCache(lm.info.layers, K2, V2, headq, cal.basis)
    )
    dense_bytes = 2 * lm.info.layers * lm.info.kv_heads * 23 * lm.info.head_dim * 4
    assert cache.get_seq_length() == 23 and cache.nbytes() < dense_bytes / 2


@pytest.mark.parametrize(("side_bits", "side_scale"), [(4, "token"), (2, "group")])
def test_key_only_and_wrong_sign_match_evaluator(side_bits, side_scale):
    """Keys leave the residual window a whole group of G at a time, so group side scales see the
    same groups in the cache as in the evaluator."""
    lm = loaded("qwen3")
    cal = calibrate(lm, CorpusSpec(split="calibration"), window=16, max_tokens=16, rank=2)
    neg = HeadQConfig(rank=2, side_bits=side_bits, sign=-1, side_scale=side_scale)
    cache = _check_same_perplexity(
        lm,
        RunSpec("k", key=K2, headq=neg),
        cal,
        20,
        lambda: HeadQCache(lm.info.layers, K2, None, neg, cal.basis),
    )
    side = cache.layers[0].key_side.side  # 19 tokens cached: 4 groups of 4 quantized, one at a time
    assert side.codes.shape[-2] == 16 and side.bits == side_bits
    if side_scale == "group":
        assert side.group_size == 4 and side.step.shape == (1, lm.info.kv_heads, 4, 2)


@pytest.mark.parametrize(("side_bits", "side_scale"),
                         [(8, "token"), (2, "token"), (2, "group"), (4, "group")])
def test_cache_keys_equal_evaluator_effective_keys(side_bits, side_scale):
    """Token by token, the cache holds exactly the evaluator's effective keys k^ + U c^ (the
    perplexity checks above barely see a rank-2 side code of a tiny model)."""
    from headq_core.evaluation.run_attention import RunAttention
    from headq_core.method.headq import random_basis
    from headq_core.models.attention import AttentionCall
    from headq_core.runtime.cache import HeadQCacheLayer

    gen = torch.Generator().manual_seed(side_bits)
    q, k, v = (torch.randn(1, h, 19, 8, generator=gen) for h in (4, 2, 2))
    headq = HeadQConfig(rank=3, side_bits=side_bits, side_scale=side_scale)
    basis = random_basis(2, 8, 3, seed=1)
    layer = HeadQCacheLayer(K2, None, headq, basis)
    for t in range(19):
        keys, _ = layer.update(k[..., t : t + 1, :], v[..., t : t + 1, :])
    views = []
    run = RunAttention(RunSpec("c", key=K2, headq=headq), basis_for=lambda _, rank: basis, sink=views.append)
    run(AttentionCall(layer=0, query=q, key=k, value=v, mask=None, scaling=8**-0.5))
    assert layer.key_side.n_quant == 16 and torch.equal(keys[..., 16:, :], k[..., 16:, :])
    torch.testing.assert_close(keys, views[0].key_eff, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_generate_runs_with_the_cache(family):
    lm = loaded(family)
    ids = torch.randint(3, 90, (1, 6))
    cache = HeadQCache(lm.info.layers, QuantConfig(bits=8, axis="per_channel", group_size=2, residual=0))
    out = lm.model.generate(ids, **cache_kwargs(lm.model, cache), max_new_tokens=8, do_sample=False,
                            pad_token_id=0)
    dense = lm.model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 14) and cache.get_seq_length() == 13
    assert torch.equal(out, dense)  # 8-bit keys do not change a greedy choice of this tiny model


def test_bad_configuration():
    with pytest.raises(ValueError, match="basis"):
        HeadQCache(2, K2, None, HeadQConfig(rank=2))


@pytest.mark.slow
def test_real_smollm2_decode_loop_matches_evaluator():
    """float64: in float32 the one-token and the whole-window forwards round differently, and a
    2-bit code that flips at a rounding boundary moves the perplexity by ~1e-3 on its own."""
    from headq_core.models.loading import BUILTIN_SMOLLM2, load_model

    lm = load_model(BUILTIN_SMOLLM2, device="cpu", dtype="float64")
    cal = calibrate(lm, CorpusSpec(split="calibration"), window=128, max_tokens=256, rank=8)
    k2 = QuantConfig(bits=2, axis="per_channel", group_size=32, residual=0)
    v4 = QuantConfig(bits=4, axis="per_token", group_size=32, residual=16)
    headq = HeadQConfig(rank=8, side_bits=8)
    _check_same_perplexity(
        lm,
        RunSpec("kv_headq", key=k2, value=v4, headq=headq),
        cal,
        160,
        lambda: HeadQCache(lm.info.layers, k2, v4, headq, cal.basis),
    )


@pytest.mark.parametrize("high_bits", [8, 16])
def test_online_a2_value_policy_matches_evaluator(high_bits):
    """Kept tokens of every step are stored as one block (packed at 8 bits, exact at 16)."""
    from headq_core.config import ValuePolicyConfig

    lm = loaded("llama")
    policy = ValuePolicyConfig(mode="online", keep_fraction=0.3, high_bits=high_bits)
    run = RunSpec("kv2_a2", key=K2, value=V2, value_policy=policy)
    cache = HeadQCache(lm.info.layers, K2, V2, value_policy=policy)
    doc = evaluate(lm, SPEC, [run], window=24, max_tokens=24, heads=False)
    ids = corpus_windows(lm.tokenizer, SPEC, 24, 24).ids[0]
    with cache.attached(lm.model):
        nll = _decode_nll(lm, ids, cache)
    assert math.exp(nll) == pytest.approx(doc["runs"][0]["perplexity"], rel=1e-3)
    plain = evaluate(lm, SPEC, [RunSpec("kv2", key=K2, value=V2)], window=24, max_tokens=24, heads=False)
    assert doc["runs"][0]["perplexity"] != plain["runs"][0]["perplexity"]  # the policy kept some tokens
    kept = cache.layers[0].value_side.keep
    assert kept.shape == (1, 2, 21) and 0 < kept.float().mean() < 1
    at = cache.layers[0].value_side.high_at  # tokens some head keeps, once each, in order
    assert torch.equal(at, kept[0].any(0).nonzero().flatten())
    with pytest.raises(ValueError, match="value_policy: run the model inside"):
        lm.model(ids[None, :2], **cache_kwargs(lm.model, HeadQCache(lm.info.layers, K2, V2,
                                                                     value_policy=policy)))


@pytest.mark.parametrize(("head_dim", "expected"), [(16, True), (48, False), (8, False)])
def test_cache_takes_the_kernel_path_only_for_layouts_the_kernel_covers(head_dim, expected):
    """One rule (``kernels.layout.decode_covers``) for the cache and the kernel's dispatch: a
    head_dim of 48 has whole 32-bit code rows but is not a power of two, so the kernel refuses it
    and the cache must read it densely (it used to pick the kernel and fail)."""
    from headq_core.runtime.cache import HeadQCacheLayer

    v2 = QuantConfig(bits=2, axis="per_token", group_size=8, residual=0)
    layer = HeadQCacheLayer(K2, v2)
    layer.attached, layer.kernel = True, "triton"
    assert layer._kernel_reads(torch.zeros(1, 2, 1, head_dim)) is expected


@pytest.mark.parametrize("basis", ["query_pca", "random"])
def test_cache_from_run_decodes_as_the_evaluator_scores(basis):
    """``HeadQCache.from_run`` takes the evaluator's run spec and calibration and picks each layer's
    basis by the same rule (a random basis is seeded per layer in both)."""
    lm = loaded("llama")
    cal = calibrate(lm, CorpusSpec(split="calibration"), window=16, max_tokens=32, rank=4)
    run = RunSpec("kv2_headq", key=K2, value=V2, headq=HeadQConfig(rank=3, side_bits=8, basis=basis))
    _check_same_perplexity(lm, run, cal, 24, lambda: HeadQCache.from_run(run, cal, lm.info))


def test_cache_from_run_refuses_what_a_cache_cannot_store():
    lm = loaded("llama")
    with pytest.raises(ValueError, match="headq.basis: key_pca"):
        HeadQCache.from_run(RunSpec("kp", key=K2, headq=HeadQConfig(rank=2, basis="key_pca")), None, lm.info)
    with pytest.raises(ValueError, match="calibration"):
        HeadQCache.from_run(RunSpec("q", key=K2, headq=HeadQConfig(rank=2)), None, lm.info)


FORMAT_CASES = {  # keys, values; residual windows so both the quantized head and the tail are read
    "q4_0": (QuantConfig(format="q4_0", bits=4, axis="per_token", group_size=32, residual=3),
             QuantConfig(format="q8_0", bits=8, axis="per_token", group_size=32, residual=2)),
    "fp8_e4m3": (QuantConfig(format="fp8_e4m3", bits=8, axis="per_token", fp8_scale="token", residual=3),
                 QuantConfig(format="fp8_e5m2", bits=8, axis="per_token", fp8_scale="unit")),
    "hadamard+k2": (QuantConfig(bits=2, group_size=4, residual=3, rotation="hadamard", rotation_seed=3),
                    QuantConfig(bits=4, axis="per_token", group_size=8, symmetric=True)),
}


@pytest.mark.parametrize("family", ["llama", "gemma2"])
@pytest.mark.parametrize("case", sorted(FORMAT_CASES))
def test_engine_formats_decode_as_the_evaluator_scores(case, family):
    """Formats the packed codes do not hold (engine formats, rotations, symmetric codes) go through
    the dequantizing side: a decode loop reads what the evaluator scores (HeadQ on the keys too;
    1e-5, tighter than float32 noise needs: the last ``residual`` tokens of each move once stayed
    exact, 1.8% off on gemma2), and the bytes counted are the format's own (``row_bits``)."""
    from headq_core.method.formats import row_bits
    from headq_core.runtime.format_side import FormatSide

    lm = loaded(family, head_dim=32)
    key, value = FORMAT_CASES[case]
    headq = HeadQConfig(rank=2, side_bits=8, basis="random")
    run = RunSpec(case, key=key, value=value, headq=headq)
    doc = evaluate(lm, SPEC, [run], window=24, max_tokens=24, heads=False)
    ids = corpus_windows(lm.tokenizer, SPEC, 24, 24).ids[0]
    cache = HeadQCache.from_run(run, None, lm.info)
    assert math.exp(_decode_nll(lm, ids, cache)) == pytest.approx(doc["runs"][0]["perplexity"], rel=1e-5)
    layer = cache.quant_layers[0]
    assert isinstance(layer.key_side, FormatSide) and isinstance(layer.value_side, FormatSide)
    side = layer.value_side
    assert side.head is not None and side.tail is not None
    tail = side.tail.numel() * side.tail.element_size()
    assert side.nbytes() == tail + int(side.head.numel() * row_bits(value, 32) / 8)


def test_the_cache_policy_needs_the_plain_int_value_format():
    policy = ValuePolicyConfig(mode="online", keep_fraction=0.3)
    rotated = QuantConfig(bits=2, axis="per_token", group_size=4, rotation="hadamard")
    with pytest.raises(ValueError, match="value_policy: the cache's A² policy needs the plain 'int'"):
        HeadQCache(2, K2, rotated, value_policy=policy)
