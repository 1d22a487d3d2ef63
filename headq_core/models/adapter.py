"""The one module that knows which models the product supports and routes their attention.

A model type is supported when it is in ``VERIFIED_MODEL_TYPES`` (tiny models of each are checked
against transformers' own attention and cache by the tests) or its attention passes the runtime
probe (:mod:`headq_core.models.probe`). :func:`attention_handler` switches a supported model to the
``headq`` implementation (:mod:`headq_core.models.attention`) inside a context manager that always
restores the previous one. :func:`check_pre_rope` says whether a model's keys can be un-rotated
(:data:`PRE_ROPE_MODEL_TYPES`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from headq_core.models.attention import (
    AttentionCall,
    Handler,
    attention_modules,
    config_geometry,
    dense_attention,
    routed,
)
from headq_core.models.probe import probe_failure

# model types whose tiny models the tests check against transformers' own attention and cache
VERIFIED_MODEL_TYPES = (
    "llama", "mistral", "qwen2", "qwen3", "gpt_neox", "gpt2", "phi3", "phi", "stablelm", "olmo", "olmo2",
    "olmo3", "gemma", "gemma2", "gemma3_text", "starcoder2", "granite", "cohere", "cohere2", "smollm3",
    "mixtral", "qwen2_moe", "qwen3_moe",
)


# model types whose rotary embedding is the full-width ``rotate_half`` one (``k*cos + rotate_half(k)*sin``
# over all of head_dim, cos / sin the same for both halves), checked on tiny models by the tests: the
# pre-RoPE key formats (``QuantConfig.pre_rope``) un-rotate their keys. SmolLM3's NoPE layers read
# the identity. Not: gpt2 (no RoPE), gpt_neox / phi / stablelm (partial rotary), cohere / cohere2
# (interleaved pairs).
PRE_ROPE_MODEL_TYPES = (
    "llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "olmo3", "gemma", "gemma2", "gemma3_text",
    "starcoder2", "granite", "smollm3", "mixtral", "qwen2_moe", "qwen3_moe", "phi3",
)


def _partial_rotary_factors(config) -> set[float]:
    """Every ``partial_rotary_factor`` a config states (top level, its rope parameters, per layer type)."""
    found = {getattr(config, "partial_rotary_factor", None)}
    params = getattr(config, "rope_parameters", None) or {}
    for entry in [params, *(v for v in params.values() if isinstance(v, dict))]:
        found.add(entry.get("partial_rotary_factor"))
    return {float(f) for f in found if f is not None}


def check_pre_rope(model) -> None:
    """Raise ValueError naming ``key.pre_rope`` and the model type unless ``model``'s keys can be
    un-rotated: a type of :data:`PRE_ROPE_MODEL_TYPES` whose rotary embedding covers all of head_dim."""
    model_type = architecture_of(model)
    if model_type not in PRE_ROPE_MODEL_TYPES:
        raise ValueError(f"key.pre_rope: model type {model_type!r} has no full-width rotate_half rotary "
                         f"embedding to undo; supported: {', '.join(PRE_ROPE_MODEL_TYPES)}")
    partial = sorted(f for f in _partial_rotary_factors(model.config) if f != 1.0)
    if partial:
        raise ValueError(f"key.pre_rope: model type {model_type!r} rotates only part of head_dim "
                         f"(partial_rotary_factor {partial[0]})")


def architecture_of(model) -> str:
    """The model's ``model_type``: a verified one, or any other whose attention passes the runtime
    probe (``models.probe``, run once per model); otherwise a ValueError saying what failed."""
    model_type = str(getattr(model.config, "model_type", ""))
    if model_type not in VERIFIED_MODEL_TYPES:
        failure = probe_failure(model)
        if failure is not None:
            raise ValueError(
                f"model: architecture {model_type!r} is not in the verified list and its attention is "
                f"not standard: {failure}; verified model types: {', '.join(VERIFIED_MODEL_TYPES)}"
            )
    return model_type


def model_geometry(model) -> tuple[int, int, int, int, float]:
    """(layers, q_heads, kv_heads, head_dim, logit scale of layer 0) of a supported model."""
    architecture_of(model)
    scale = attention_modules(model)[0].scaling
    return (*config_geometry(model.config), float(scale))  # type: ignore[arg-type]


@contextmanager
def attention_handler(model, handler: Handler, rope: bool = False) -> Iterator[None]:
    """Route every attention call of ``model`` through ``handler``; always restores the model. With
    ``rope`` (pre-RoPE key formats; :func:`check_pre_rope` first) each call carries its layer's
    rotary cos / sin (``AttentionCall.rope``)."""
    architecture_of(model)
    if rope:
        check_pre_rope(model)
    with routed(model, handler, rope):
        yield


@contextmanager
def capture(
    model, on_layer: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
) -> Iterator[None]:
    """Call ``on_layer(layer, q, k, v)`` with the post-RoPE tensors of every layer; attention stays dense."""

    def handler(call: AttentionCall) -> torch.Tensor:
        on_layer(call.layer, call.query.detach(), call.key.detach(), call.value.detach())
        return dense_attention(call)

    with attention_handler(model, handler):
        yield
