"""A real token-by-token decode loop for tests: the NLL a model gives a window when it reads its
keys and values back from a cache, one token per step."""

from contextlib import nullcontext

import torch
from transformers import DynamicCache

from headq_core.method.quant import fake_quantize
from headq_core.models.adapter import attention_handler
from headq_core.models.attention import dense_attention
from headq_core.models.calls import cache_kwargs


def decode_nll(model, ids: torch.Tensor, cache=None, context=None) -> float:
    """Sum of NLL of ``ids`` [L] predicted one step at a time through ``cache`` (default a fresh
    ``DynamicCache``) inside ``context`` (e.g. an attention handler)."""
    cache = DynamicCache() if cache is None else cache
    total = 0.0
    with torch.no_grad(), context if context is not None else nullcontext():
        for t in range(ids.shape[0] - 1):
            step = model(ids[None, t : t + 1], use_cache=True, **cache_kwargs(model, cache))
            total -= torch.log_softmax(step.logits[0, -1].double(), -1)[ids[t + 1]].item()
    return total


def fake_quantized_nll(model, ids: torch.Tensor, key_cfg, value_cfg, key_kwargs=None, value_kwargs=None
                       ) -> float:
    """:func:`decode_nll` through transformers' ``DynamicCache`` (exact keys and values) whose attention
    reads the leading ``quantized_count(n)`` of the n cached tokens through ``fake_quantize`` (the
    decode state of a quantized cache); ``*_kwargs(layer)`` gives ``fake_quantize``'s calibration
    keywords of a layer (amax, codebook)."""

    def handler(call):
        k, v = call.key, call.value
        if key_cfg is not None:
            k = fake_quantize(k, key_cfg, **(key_kwargs(call.layer) if key_kwargs else {}))
        if value_cfg is not None:
            v = fake_quantize(v, value_cfg, **(value_kwargs(call.layer) if value_kwargs else {}))
        return dense_attention(call, logits=call.finish(call.raw_scores(k)), value=v)

    return decode_nll(model, ids, context=attention_handler(model, handler))
