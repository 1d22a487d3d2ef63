"""The one module that knows which models the product supports and routes their attention.

A model type is supported when it is in ``VERIFIED_MODEL_TYPES`` (tiny models of each are checked
against transformers' own attention and cache by the tests) or its attention passes the runtime
probe (:mod:`headq_core.models.probe`). :func:`attention_handler` switches a supported model to the
``headq`` implementation (:mod:`headq_core.models.attention`) inside a context manager that always
restores the previous one.
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
def attention_handler(model, handler: Handler) -> Iterator[None]:
    """Route every attention call of ``model`` through ``handler``; always restores the model."""
    architecture_of(model)
    with routed(model, handler):
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
