"""Pre-RoPE keys on real (tiny) models: the rotary cos / sin the attention handler gets undo each
supported family's own rotation (checked against the key its modules compute before RoPE); the
evaluator equals a direct computation; the cache decodes as the evaluator scores; models whose
rotation cannot be undone are refused before any forward pass."""

import math

import pytest
import torch

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.evaluation.windows import corpus_windows
from headq_core.method.pre_rope import unrotate
from headq_core.method.quant import fake_quantize
from headq_core.method.schedule import decode_mask
from headq_core.models.adapter import PRE_ROPE_MODEL_TYPES, VERIFIED_MODEL_TYPES, attention_handler
from headq_core.models.attention import attention_modules, dense_attention
from headq_core.models.calls import cache_kwargs
from headq_core.runtime.cache import HeadQCache
from headq_core.runtime.format_side import FormatSide
from tests.models.decode_loop import decode_nll
from tests.models.tiny import build, loaded

SPEC = CorpusSpec(split="eval")
K2 = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=3, pre_rope=True)


def _as_heads(x: torch.Tensor, kv_heads: int, seq: int) -> torch.Tensor:
    """A key projection as a module returns it ([b, s, h*d], [b, s, h, d] or [b, h, s, d]) ->
    [b, h, s, d] (seq != kv_heads, so the layouts are told apart)."""
    if x.dim() == 3:
        return x.view(x.shape[0], seq, kv_heads, -1).transpose(1, 2)
    return x if x.shape[1] == kv_heads and x.shape[2] == seq else x.transpose(1, 2)


def _pre_rope_keys(model, module, store: dict, layer: int, kv_heads: int, seq: int):
    """Hook the module that makes layer ``layer``'s pre-RoPE keys: ``k_norm`` where the family
    normalises keys before RoPE, else ``k_proj`` (phi3: the key slice of ``qkv_proj``)."""
    def keep(_mod, _args, out):
        if hasattr(module, "qkv_proj"):
            q_width = model.config.num_attention_heads * module.head_dim
            out = out[..., q_width: q_width + kv_heads * module.head_dim]
        store[layer] = _as_heads(out.detach(), kv_heads, seq)

    source = getattr(module, "k_norm", None) or getattr(module, "k_proj", None) or module.qkv_proj
    return source.register_forward_hook(keep)


def test_the_supported_families_are_verified_and_the_others_named():
    assert set(PRE_ROPE_MODEL_TYPES) <= set(VERIFIED_MODEL_TYPES)
    assert {"gpt2", "gpt_neox", "phi", "stablelm", "cohere", "cohere2"}.isdisjoint(PRE_ROPE_MODEL_TYPES)


@pytest.mark.parametrize("family", PRE_ROPE_MODEL_TYPES)
def test_unrotating_the_handlers_key_gives_the_models_pre_rope_key(family):
    """Independent of the rotation maths: the key a family computes before its rotary embedding
    (hooked on its own modules) equals ``unrotate(call.key, call.rope)`` (float32, 1e-5); SmolLM3's
    NoPE layer 1 gets the identity."""
    model = build(family)
    seq = 7
    kv_heads = model.config.num_key_value_heads or model.config.num_attention_heads
    pre, seen = {}, {}
    hooks = [_pre_rope_keys(model, m, pre, i, kv_heads, seq) for i, m in attention_modules(model).items()]

    def handler(call):
        seen[call.layer] = (call.key.detach(), call.rope)
        return dense_attention(call)

    ids = torch.randint(3, 90, (2, seq), generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad(), attention_handler(model, handler, rope=True):
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    assert set(seen) == set(pre) == set(range(model.config.num_hidden_layers))
    for layer, (key, rope) in seen.items():
        assert rope is not None and rope[0].shape[-1] == key.shape[-1]
        torch.testing.assert_close(unrotate(key, rope), pre[layer].float(), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(key, pre[layer], atol=1e-3) or (family, layer) == ("smollm3", 1)


def test_without_rope_the_call_carries_none():
    model, ropes = build("llama"), []

    def handler(call):
        ropes.append(call.rope)
        return dense_attention(call)

    with torch.no_grad(), attention_handler(model, handler):
        model(torch.tensor([[5, 6, 7]]))
    assert ropes == [None, None]


def _direct_nll(lm, ids: torch.Tensor, cfg: QuantConfig) -> float:
    """Mean NLL of ids[1:] with every layer's attention computed by hand: the pre-RoPE key from
    ``k_proj``, int per-channel fake quantization, the rotation re-applied from the model's own
    rotary embedding as an explicit 2x2 rotation per channel pair, the decode rule, softmax."""
    model, seq = lm.model, ids.shape[-1]
    plain = QuantConfig(bits=cfg.bits, axis=cfg.axis, group_size=cfg.group_size, residual=cfg.residual)
    pre: dict[int, torch.Tensor] = {}
    hooks = [_pre_rope_keys(model, module, pre, i, lm.info.kv_heads, seq)
             for i, module in attention_modules(model).items()]
    hidden = torch.zeros(1, seq, model.config.hidden_size)
    cos, sin = model.model.rotary_emb(hidden, torch.arange(seq)[None])
    c, s = cos[0, :, : lm.info.head_dim // 2], sin[0, :, : lm.info.head_dim // 2]
    quantized = decode_mask(seq, seq, plain)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()

    def handler(call):
        p = fake_quantize(pre[call.layer].float(), plain)
        p1, p2 = p.chunk(2, dim=-1)
        k_hat = torch.cat([p1 * c - p2 * s, p2 * c + p1 * s], dim=-1)
        k = torch.where(quantized[..., None], k_hat[:, :, None], call.key[:, :, None].float())  # [b,h,t,j,d]
        q = call.query.float().view(1, lm.info.kv_heads, -1, seq, lm.info.head_dim)
        logits = torch.einsum("bhgtd,bhtjd->bhgtj", q, k) * call.scaling
        probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
        out = torch.einsum("bhgtj,bhjd->bhgtd", probs, call.value.float())
        return out.reshape(call.query.shape)

    try:
        with torch.no_grad(), attention_handler(model, handler):
            logits = model(ids[None]).logits[0].double()
    finally:
        for hook in hooks:
            hook.remove()
    return float(-torch.log_softmax(logits[:-1], -1).gather(1, ids[1:, None]).mean())


@pytest.mark.parametrize("family", ["llama", "qwen3"])  # qwen3: keys normalised per head before RoPE
def test_evaluator_equals_a_direct_computation(family):
    lm = loaded(family)
    post = QuantConfig(bits=2, axis="per_channel", group_size=4, residual=3)
    runs = [RunSpec("dense"), RunSpec("prerope", key=K2), RunSpec("post", key=post)]
    doc = evaluate(lm, SPEC, runs, window=12, max_tokens=12, heads=True)
    ids = corpus_windows(lm.tokenizer, SPEC, 12, 12).ids[0]
    rows = {r["name"]: r for r in doc["runs"]}
    assert rows["prerope"]["nll"] == pytest.approx(_direct_nll(lm, ids, K2), rel=1e-5)
    assert rows["prerope"]["nll"] != pytest.approx(rows["post"]["nll"], rel=1e-6)  # not the post-RoPE run
    assert rows["prerope"]["effective_bits"] == rows["post"]["effective_bits"]  # no stored bits
    assert rows["prerope"]["spec"]["key"]["pre_rope"] is True
    assert "pre_rope" not in rows["post"]["spec"]["key"]
    assert any(h["run"] == "prerope" for h in doc["heads"])
    blockwise = evaluate(lm, SPEC, runs[1:2], window=12, max_tokens=12, heads=False, attention="blockwise")
    assert blockwise["runs"][0]["nll"] == pytest.approx(rows["prerope"]["nll"], rel=1e-5)


@pytest.mark.parametrize(("family", "overrides"), [
    ("gpt_neox", {}), ("phi", {}), ("stablelm", {}), ("cohere", {}), ("cohere2", {}), ("gpt2", {}),
    ("phi3", {"partial_rotary_factor": 0.5}),
])
def test_models_whose_rotation_cannot_be_undone_are_refused_before_any_forward(family, overrides):
    lm = loaded(family, **overrides)
    lm.model.register_forward_pre_hook(lambda *_: pytest.fail("a forward pass ran"))
    with pytest.raises(ValueError, match=rf"key\.pre_rope: model type '{family}'.*\(run 'p'\)"):
        evaluate(lm, SPEC, [RunSpec("dense"), RunSpec("p", key=K2)], window=12, max_tokens=12)
    cache = HeadQCache.from_run(RunSpec("p", key=K2), None, lm.info)
    with pytest.raises(ValueError, match=rf"key\.pre_rope: model type '{family}'"), cache.attached(lm.model):
        pass


CACHE_CASES = {  # keys, values; residual windows so the quantized head and the tail are both read
    "int2": (K2, None),
    "q4_0+hadamard": (QuantConfig(format="q4_0", bits=4, axis="per_token", residual=2, rotation="hadamard",
                                  rotation_seed=2, pre_rope=True),
                      QuantConfig(bits=2, axis="per_token", group_size=8, residual=2)),
    "int3-sym": (QuantConfig(bits=3, axis="per_channel", group_size=4, symmetric=True, pre_rope=True), None),
}


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "smollm3"])  # sliding + k_norm; a NoPE layer
@pytest.mark.parametrize("case", sorted(CACHE_CASES))
def test_cache_decodes_as_the_evaluator_scores(case, family):
    """A token-by-token decode loop through ``HeadQCache`` (attached: its hook gives each step's cos /
    sin) reads what the evaluator scores, with HeadQ on the pre-RoPE keys (its residual post-RoPE)."""
    lm = loaded(family, head_dim=32)
    key, value = CACHE_CASES[case]
    run = RunSpec(case, key=key, value=value, headq=HeadQConfig(rank=2, side_bits=8, basis="random"))
    doc = evaluate(lm, SPEC, [run], window=24, max_tokens=24, heads=False)
    ids = corpus_windows(lm.tokenizer, SPEC, 24, 24).ids[0]
    cache = HeadQCache.from_run(run, None, lm.info, config=lm.model.config)
    total = decode_nll(lm.model, ids, cache, cache.attached(lm.model))
    assert math.exp(total / 23) == pytest.approx(doc["runs"][0]["perplexity"], rel=1e-5)
    side = cache.quant_layers[-1].key_side
    assert isinstance(side, FormatSide) and side.head is not None and side.tail_rope is not None
    assert side.tail_rope[0].shape[-2] == side.tail.shape[-2]


def test_the_cache_needs_to_be_attached_for_pre_rope_keys():
    lm = loaded("llama")
    cache = HeadQCache.from_run(RunSpec("p", key=K2), None, lm.info)
    with pytest.raises(ValueError, match=r"key\.pre_rope: the cache needs each step's rotary cos / sin"):
        lm.model(torch.tensor([[5, 6, 7, 8]]), use_cache=True, **cache_kwargs(lm.model, cache))
