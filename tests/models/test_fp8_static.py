"""Static FP8 scales on a real (tiny) model: the calibration's amax against keys and values rebuilt by
hand, the evaluator's perplexity against a token-by-token decode loop and ``HeadQCache``, and the
refusals of a static run without a calibration (or with one made before the amax existed)."""

import math

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from headq_core.config import QuantConfig, RunSpec
from headq_core.evaluation.calibrate import Calibration, calibrate
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.evaluation.windows import corpus_windows
from headq_core.method.fp8 import Fp8Format
from headq_core.runtime.cache import HeadQCache
from tests.models.decode_loop import decode_nll, fake_quantized_nll
from tests.models.tiny import loaded

CAL, SPEC = CorpusSpec(split="calibration"), CorpusSpec(split="eval")
KEY = QuantConfig(format="fp8_e4m3", bits=8, axis="per_token", fp8_static=True, residual=2)
VALUE = QuantConfig(format="fp8_e5m2", bits=8, axis="per_token", fp8_scale="head", fp8_static=True)
RUN = RunSpec("fp8_static", key=KEY, value=VALUE)


def _direct_amax(lm, windows):
    """max |k| (post-RoPE, from k_proj and the rotary embedding) and max |v| per (layer, KV head)."""
    model, info, outs = lm.model, lm.info, {}
    hooks = [proj.register_forward_hook(lambda m, i, o, key=(n, name): outs.__setitem__(key, o))
             for n, layer in enumerate(model.model.layers)
             for name, proj in (("k", layer.self_attn.k_proj), ("v", layer.self_attn.v_proj))]
    amax = torch.zeros(2, info.layers, info.kv_heads)
    with torch.no_grad():
        for ids in windows:
            model(ids[None], use_cache=False)
            positions = torch.arange(ids.shape[0])[None]
            cos, sin = model.model.rotary_emb(torch.zeros(1, ids.shape[0], 1), positions)
            for n in range(info.layers):
                k, v = (outs[n, s].view(1, -1, info.kv_heads, info.head_dim).transpose(1, 2) for s in "kv")
                k, _ = apply_rotary_pos_emb(k, k, cos, sin)
                for i, x in enumerate((k, v)):
                    amax[i, n] = torch.maximum(amax[i, n], x.abs().amax(dim=(0, 2, 3)))
    for hook in hooks:
        hook.remove()
    return amax


def test_the_static_scale_is_the_calibration_amax_over_fp8_max():
    lm = loaded("llama")
    cal = calibrate(lm, CAL, window=16, max_tokens=48, rank=2)
    direct = _direct_amax(lm, corpus_windows(lm.tokenizer, CAL, 16, 48).ids)
    torch.testing.assert_close(cal.key_amax, direct[0], rtol=1e-6, atol=0)
    torch.testing.assert_close(cal.value_amax, direct[1], rtol=1e-6, atol=0)
    assert cal.key_amax.dtype == torch.float32 and cal.key_amax.shape == (2, 2)
    x = torch.zeros(1, 2, 1, 8)
    fmt = Fp8Format("fp8_e4m3", "head", static=True)
    torch.testing.assert_close(fmt.static_scale(cal.layer_amax(1, "key"), x).flatten(), direct[0, 1] / 448,
                               rtol=1e-6, atol=0)
    tensor = Fp8Format("fp8_e5m2", "tensor", static=True).static_scale(cal.layer_amax(0, "value"), x)
    torch.testing.assert_close(tensor.flatten(), direct[1, 0].max().view(1) / 57344, rtol=1e-6, atol=0)


def _decode_loop_nll(lm, ids, cal):
    """NLL sum of a token-by-token decode loop whose attention reads the leading cached tokens through
    ``fake_quantize`` with the calibration's amax (the decode rule of ``residual``)."""
    return fake_quantized_nll(lm.model, ids, KEY, VALUE, lambda layer: {"amax": cal.layer_amax(layer, "key")},
                              lambda layer: {"amax": cal.layer_amax(layer, "value")})


def test_static_fp8_evaluates_as_a_decode_loop_and_a_cache_read_it():
    lm = loaded("llama", head_dim=32, initializer_range=0.2)
    cal = calibrate(lm, CAL, window=12, max_tokens=24, rank=2)
    dynamic = RunSpec("fp8_dynamic", key=QuantConfig(format="fp8_e4m3", bits=8, axis="per_token", residual=2),
                      value=QuantConfig(format="fp8_e5m2", bits=8, axis="per_token", fp8_scale="head"))
    doc = evaluate(lm, SPEC, [RunSpec("dense"), RUN, dynamic], cal, window=12, max_tokens=24, heads=True)
    rows = {r["name"]: r for r in doc["runs"]}
    windows = corpus_windows(lm.tokenizer, SPEC, 12, 24).ids
    nll = sum(_decode_loop_nll(lm, w, cal) for w in windows) / (2 * 11)
    assert rows["fp8_static"]["nll"] == pytest.approx(nll, rel=1e-5)
    assert rows["fp8_static"]["nll"] != rows["fp8_dynamic"]["nll"]  # the calibration's scales
    assert rows["fp8_static"]["effective_bits"] == {"key": 8.0, "value": 8.0}
    assert rows["fp8_static"]["spec"]["key"]["fp8_static"] is True
    assert {h["run"] for h in doc["heads"]} >= {"fp8_static"}
    cache_nll = decode_nll(lm.model, windows[0], HeadQCache.from_run(RUN, cal, lm.info))
    assert cache_nll == pytest.approx(_decode_loop_nll(lm, windows[0], cal), rel=1e-5)
    assert math.isfinite(cache_nll)


def test_a_static_run_without_its_calibration_is_refused_before_evaluation():
    lm = loaded("llama")
    steps = []
    with pytest.raises(ValueError, match="calibration: run 'fp8_static' needs a calibration \\(static fp8"):
        evaluate(lm, SPEC, [RUN], window=12, max_tokens=24, progress=lambda f, s: steps.append(s))
    cal = calibrate(lm, CAL, window=12, max_tokens=24, rank=2)
    old = Calibration(cal.eigenvalues, cal.basis, cal.meta)  # an artifact from before the amax
    with pytest.raises(ValueError, match="calibration: run 'fp8_static' needs static fp8 scales; this "
                                         "calibration was made without"):
        evaluate(lm, SPEC, [RUN], old, window=12, max_tokens=24, progress=lambda f, s: steps.append(s))
    assert steps == []
    with pytest.raises(ValueError, match="calibration: the key side's static fp8 scales"):
        HeadQCache.from_run(RUN, None, lm.info)
