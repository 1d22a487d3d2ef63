"""HeadQCache on sliding-window models (issue 23): given the model config, sliding layers hold only
their window (cache bytes against the formula and transformers' own DynamicCache), a decode loop
still scores what the teacher-forced evaluator scores, generate() picks the evaluator's tokens, and
sliding layers read the packed codes through the reference kernel with a window start."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.evaluation.run_attention import RunAttention
from headq_core.evaluation.windows import corpus_windows
from headq_core.method.quant import fake_quantize
from headq_core.models.adapter import attention_handler
from headq_core.models.attention import dense_attention
from headq_core.models.calls import cache_kwargs
from headq_core.runtime.cache import HeadQCache
from headq_core.runtime.footprint import model_cache_bytes, quantized_cache_bytes
from headq_core.runtime.layer_types import layer_windows
from tests.models.tiny import build, loaded

K2 = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=3)
V2 = QuantConfig(bits=2, axis="per_token", group_size=4, residual=2)
SPEC = CorpusSpec(split="eval")
GEMMA3_TYPES = ["sliding_attention"] * 5 + ["full_attention"]


def _gemma3(window: int, **overrides):
    """Gemma-3-style: 6 layers, 5 sliding of ``window`` tokens then 1 full (4 query / 2 KV heads)."""
    return loaded("gemma3_text", num_hidden_layers=6, sliding_window=window, layer_types=GEMMA3_TYPES,
                  **overrides)


def _decode_nll(model, ids, cache, attach: bool = True) -> float:
    """Mean NLL of ids[1:] from a decode loop of one token per forward through ``cache``."""
    total = 0.0
    with torch.no_grad(), cache.attached(model) if attach else torch.no_grad():
        for t in range(ids.shape[0] - 1):
            out = model(ids[None, t : t + 1], use_cache=True, **cache_kwargs(model, cache))
            total -= torch.log_softmax(out.logits[0, -1].double(), -1)[ids[t + 1]].item()
    return total / (ids.shape[0] - 1)


def test_layer_windows_follow_the_config():
    assert layer_windows(_gemma3(6).model.config) == [6] * 5 + [None]
    assert layer_windows(build("starcoder2").config) == [4, 4]  # no layer_types: every layer slides
    assert layer_windows(build("llama").config) == [None, None]
    with pytest.raises(ValueError, match="windows: 1 entries for 2 layers"):
        HeadQCache(2, K2, windows=[4])


@pytest.mark.parametrize("kernel", ["off", "reference"])
@pytest.mark.parametrize("family", ["gemma3", "gemma2"])
def test_decode_loop_with_bounded_sliding_layers_matches_the_evaluator(family, kernel):
    """Freed groups lie wholly before the window, so the codes kept are the evaluator's; with
    ``kernel="reference"`` every decode step reads the packed codes from the mask's window start
    (gemma2 also with its logit softcap)."""
    lm = _gemma3(6) if family == "gemma3" else loaded("gemma2")
    scale = "token" if family == "gemma3" else "group"  # group side scales are freed a group at a time
    headq = HeadQConfig(rank=2, side_bits=8, basis="random", side_scale=scale)
    run = RunSpec("kv2_headq", key=K2, value=V2, headq=headq)
    doc = evaluate(lm, SPEC, [run], window=24, max_tokens=24, heads=False)
    ids = corpus_windows(lm.tokenizer, SPEC, 24, 24).ids[0]
    cache = HeadQCache.from_run(run, None, lm.info, lm.model.config)
    for layer in cache.quant_layers:
        layer.kernel = kernel
    nll = _decode_nll(lm.model, ids, cache)
    assert math.exp(nll) == pytest.approx(doc["runs"][0]["perplexity"], rel=1e-3)
    window = lm.model.config.sliding_window
    for layer in cache.quant_layers:
        held = layer.get_seq_length() - layer.first
        if layer.window is None:
            assert layer.first == 0 and held == 23
        else:  # the window plus at most a key group and the residual the decode rule keeps dense
            assert layer.first > 0 and held <= window - 1 + K2.group_size - 1 + K2.residual
    by_type = cache.nbytes_by_layer_type()
    assert sum(by_type.values()) == cache.nbytes() and set(by_type) == {"sliding_attention", "full_attention"}


def test_full_precision_sliding_layers_match_a_direct_decode_loop():
    """``sliding_layers="full_precision"``: only the full layer is quantized. Checked against
    transformers' DynamicCache with attention that fake-quantizes the full layer's keys and values
    as the decode rule reads them (``tests/models/test_evaluate.py``'s direct loop)."""
    from headq_core.method.schedule import decode_mask

    lm = _gemma3(5)
    ids = corpus_windows(lm.tokenizer, SPEC, 20, 20).ids[0]
    full = {i for i, w in enumerate(layer_windows(lm.model.config)) if w is None}

    def handler(call):
        if call.layer not in full:
            return dense_attention(call)
        n = call.key.shape[-2]
        k_read = decode_mask(1, n, K2, offset=n - 1)[0, :, None]
        v_read = decode_mask(1, n, V2, offset=n - 1)[0, :, None]
        k = torch.where(k_read, fake_quantize(call.key, K2), call.key)
        v = torch.where(v_read, fake_quantize(call.value, V2), call.value)
        return dense_attention(call, logits=call.finish(call.raw_scores(k)), value=v)

    total, direct = 0.0, DynamicCache()
    with torch.no_grad(), attention_handler(lm.model, handler):
        for t in range(ids.shape[0] - 1):
            out = lm.model(ids[None, t : t + 1], use_cache=True, **cache_kwargs(lm.model, direct))
            total -= torch.log_softmax(out.logits[0, -1].double(), -1)[ids[t + 1]].item()
    run = RunSpec("kv2", key=K2, value=V2, sliding_layers="full_precision")
    cache = HeadQCache.from_run(run, None, lm.info, lm.model.config)
    assert _decode_nll(lm.model, ids, cache) == pytest.approx(total / (ids.shape[0] - 1), rel=1e-6)
    for attention in ("materialised", "blockwise"):  # the evaluator keeps the sliding layers exact too
        doc = evaluate(lm, SPEC, [run], window=20, max_tokens=20, attention=attention)
        assert math.log(doc["runs"][0]["perplexity"]) == pytest.approx(total / (ids.shape[0] - 1), rel=1e-5)
        errors = {(h["layer"], h["attn_kl"] > 0) for h in doc["heads"]}
        assert errors == {(layer, False) for layer in range(5)} | {(5, True)}, attention
    sliding = cache.quant_layers[0]
    assert sliding.key_side.cfg is None and sliding.get_seq_length() - sliding.first == 4  # window - 1


def test_generate_picks_the_evaluators_tokens():
    """generate() through the bounded cache, from a one-token prompt (every step a decode step), gives
    the greedy tokens of the evaluator's decode-exact attention (``RunAttention``) over the result."""
    lm = _gemma3(6, initializer_range=0.5)
    run = RunSpec("kv2", key=K2, value=V2)
    cache = HeadQCache.from_run(run, None, lm.info, lm.model.config)
    out = lm.model.generate(torch.tensor([[5]]), **cache_kwargs(lm.model, cache), max_new_tokens=20,
                            do_sample=False, pad_token_id=0)
    assert out.shape == (1, 21) and cache.quant_layers[0].first > 0
    with torch.no_grad(), attention_handler(lm.model, RunAttention(run)):
        logits = lm.model(out[:, :-1]).logits[0]
    assert torch.equal(logits.argmax(-1), out[0, 1:])


def test_cache_bytes_after_a_4k_prefill_follow_the_bounded_formula():
    """Tiny Gemma-3-style bf16 model (head_dim 64, window 128), 2-bit K/V: after a 4,096-token prefill
    and 4 decode steps the cache holds within 10% of the formula with bounded sliding layers, and
    transformers' DynamicCache(config=...) holds what ``model_cache_bytes`` says."""
    model = build("gemma3_text", num_hidden_layers=6, sliding_window=128, layer_types=GEMMA3_TYPES,
                  head_dim=64, max_position_embeddings=8192).to(torch.bfloat16)
    key = QuantConfig(bits=2, axis="per_channel", group_size=32, residual=32)
    value = QuantConfig(bits=2, axis="per_token", group_size=32, residual=32)
    ids = torch.randint(3, 90, (1, 4100), generator=torch.Generator().manual_seed(0))
    caches = {"dynamic": DynamicCache(config=model.config),
              "headq": HeadQCache(6, key, value, config=model.config)}
    with torch.no_grad():
        for cache in caches.values():
            model(ids[:, :4096], use_cache=True, **cache_kwargs(model, cache))
            for i in range(4):
                model(ids[:, 4096 + i : 4097 + i], use_cache=True, **cache_kwargs(model, cache))
    dense_held = sum(layer.keys.nbytes + layer.values.nbytes for layer in caches["dynamic"].layers)
    headq = caches["headq"]
    geometry = dict(batch=1, kv_heads=2, head_dim=64)
    assert dense_held == model_cache_bytes(headq.windows, 4100, **geometry)
    formula = quantized_cache_bytes(headq.windows, 4100, key, value, **geometry)
    assert headq.nbytes() == pytest.approx(formula, rel=0.1)
    assert headq.nbytes() < 0.3 * dense_held
    sliding = headq.nbytes_by_layer_type()["sliding_attention"]
    assert sliding < 5 * 2 * 2 * (128 + 32 + 32) * 64 * 2  # each sliding layer: window + group + residual


def test_run_spec_carries_the_sliding_choice():
    """Default None (= quantize) leaves existing specs as they were; the choice round-trips through
    dicts and reaches the cache; a bad value names the field."""
    assert "sliding_layers" not in RunSpec("kv2", key=K2).to_dict()
    run = RunSpec.from_dict({"name": "kv2", "key": {"bits": 2}, "sliding_layers": "full_precision"})
    assert run.to_dict()["sliding_layers"] == "full_precision" and RunSpec.from_dict(run.to_dict()) == run
    with pytest.raises(ValueError, match="sliding_layers: must be 'quantize' or 'full_precision'"):
        RunSpec("x", sliding_layers="dense")  # type: ignore[arg-type]
    lm = _gemma3(6)
    cache = HeadQCache.from_run(RunSpec("kv2", key=K2, value=V2), None, lm.info, lm.model.config)
    assert cache.sliding_layers == "quantize" and cache.quant_layers[0].key_side.cfg == K2
    with pytest.raises(ValueError, match="sliding_layers"):
        HeadQCache(2, K2, sliding_layers="dense")


def test_a_sliding_layer_frees_engine_format_tokens_too():
    """The dequantizing side (an engine format) also frees tokens that leave the window, and the
    decode loop still scores what the evaluator scores."""
    lm = _gemma3(6, head_dim=32)
    key = QuantConfig(format="q4_0", bits=4, axis="per_token", group_size=32, residual=3)
    run = RunSpec("q4_0", key=key, value=V2)
    doc = evaluate(lm, SPEC, [run], window=24, max_tokens=24, heads=False)
    ids = corpus_windows(lm.tokenizer, SPEC, 24, 24).ids[0]
    cache = HeadQCache.from_run(run, None, lm.info, lm.model.config)
    nll = _decode_nll(lm.model, ids, cache)  # 1e-3 as the packed sliding test: sliding layers
    # agree to 1e-5..2e-4 here (full-attention ones to 1e-6); issue 23's criterion is 1e-3
    assert math.exp(nll) == pytest.approx(doc["runs"][0]["perplexity"], rel=1e-3)
    sliding = cache.quant_layers[0]
    assert sliding.first > 0 and sliding.key_side.n_quant + sliding.key_side.first == 23 - key.residual
