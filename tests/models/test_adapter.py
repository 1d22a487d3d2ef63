"""The adapter: the ``headq`` attention reproduces each verified family's own attention (softcap,
sliding window, q/k norm, partial rotary, attention multiplier included), hands the handler post-RoPE
q/k/v (checked against the keys transformers' own cache stores), the model's own scale and mask, and
always restores the model."""

import pytest
import torch

from headq_core.models.adapter import VERIFIED_MODEL_TYPES, attention_handler, capture, model_geometry
from headq_core.models.attention import AttentionCall, attention_modules, dense_attention
from tests.models.tiny import FAMILIES, build


def test_every_verified_type_has_a_tiny_model_in_these_tests():
    assert sorted(FAMILIES) == sorted(VERIFIED_MODEL_TYPES)


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_handler_matches_model_and_captures_cached_keys(family):
    model = build(family)
    ids = torch.randint(3, 90, (2, 11))
    with torch.no_grad():
        ref = model(ids, use_cache=True)
        seen = {}
        with capture(model, lambda layer, q, k, v: seen.__setitem__(layer, (q, k, v))):
            out = model(ids, use_cache=False).logits
    torch.testing.assert_close(out, ref.logits, atol=1e-5, rtol=1e-5)
    layers, heads, kv_heads, head_dim, _ = model_geometry(model)
    assert sorted(seen) == list(range(layers))
    for layer, (q, k, v) in seen.items():
        assert q.shape == (2, heads, 11, head_dim) and k.shape == (2, kv_heads, 11, head_dim)
        cached = ref.past_key_values.layers[layer]
        n = cached.keys.shape[-2]  # a sliding-window layer caches only its window's last tokens
        assert n == 11 or (cached.is_sliding and n < 11)
        torch.testing.assert_close(k[..., -n:, :], cached.keys)  # post-RoPE keys, what a cache holds
        torch.testing.assert_close(v[..., -n:, :], cached.values)


def test_handler_sees_module_scaling_gpt2_inverse_layer_idx():
    model = build("gpt2", scale_attn_by_inverse_layer_idx=True)
    scales = {}

    def handler(call: AttentionCall) -> torch.Tensor:
        scales[call.layer] = call.scaling
        return dense_attention(call)

    with torch.no_grad(), attention_handler(model, handler):
        model(torch.randint(3, 90, (1, 5)))
    assert scales == {0: pytest.approx(8**-0.5), 1: pytest.approx(8**-0.5 / 2)}
    assert {i: m.scaling for i, m in attention_modules(model).items()} == pytest.approx(scales)


def test_sliding_window_mask_is_the_models_own():
    model = build("mistral", sliding_window=3)
    model.set_attn_implementation("eager")
    ids = torch.randint(3, 90, (1, 9))
    with torch.no_grad():
        ref = model(ids).logits
        allowed = []

        def handler(call):
            allowed.append(call.allowed()[0, 0])
            return dense_attention(call)

        with attention_handler(model, handler):
            out = model(ids).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    t = torch.arange(9)
    expect = (t[None] <= t[:, None]) & (t[:, None] - t[None] < 3)
    assert torch.equal(allowed[0], expect)


def test_model_restored_even_when_handler_raises():
    model = build("llama")
    before = model.config._attn_implementation

    def boom(call):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), attention_handler(model, boom):
        model(torch.randint(3, 90, (1, 4)))
    assert model.config._attn_implementation == before
    model(torch.randint(3, 90, (1, 4)))  # plain forward works again


def test_unverified_architecture_without_attention_interface_is_refused():
    """Bloom (ALiBi) computes its attention itself: the probe sees no call and names the verified types."""
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=16, n_layer=2, n_head=2))
    match = (r"'bloom' is not in the verified list.*layer\(s\) \[0, 1\] never reached the attention "
             r"interface; verified model types: " + ", ".join(VERIFIED_MODEL_TYPES))
    with pytest.raises(ValueError, match=match), attention_handler(model, dense_attention):
        pass
