"""Answer a prompt through a run's cache, and read each head's attention at the answer's first
decode step.

:func:`new_cache`: a dense run decodes with transformers' ``DynamicCache``, any other through
``HeadQCache.from_run``. :func:`answer` prefills the prompt and decodes greedily with
``model.generate()`` inside ``cache.attached(model)`` (on CUDA the cache's kernel path runs).

:func:`first_step_attention` prefills the prompt into a fresh cache (a quantized cache prefills in
full precision, so the answer's first token is the dense one), then decodes that first token: the
first step that reads the prompt as the cache stores it. Its attention probabilities, one row per
query head over the prompt and the token, are what :func:`head_rows` compares: the mass on the
needle's tokens, dense vs quantized, and KL(dense ‖ quantized).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from transformers import DynamicCache

from headq_core.config import RunSpec
from headq_core.models.adapter import attention_handler
from headq_core.models.attention import AttentionCall, fused_attention
from headq_core.models.calls import cache_kwargs
from headq_core.models.loading import LoadedModel
from headq_core.runtime.cache import CalibrationSource, HeadQCache


def new_cache(loaded: LoadedModel, run: RunSpec, calibration: CalibrationSource | None) -> Any:
    """An empty cache for ``run``: ``DynamicCache`` when dense, else ``HeadQCache.from_run``."""
    if run.is_dense:
        return DynamicCache()
    return HeadQCache.from_run(run, calibration, loaded.info)


def _attached(cache: Any, model: Any) -> contextlib.AbstractContextManager:
    return cache.attached(model) if isinstance(cache, HeadQCache) else contextlib.nullcontext()


def answer(loaded: LoadedModel, ids: torch.Tensor, cache: Any, new_tokens: int) -> list[int]:
    """Greedy answer ids (at most ``new_tokens``) to the prompt ``ids`` [1, L] through ``cache``."""
    model = loaded.model
    eos = getattr(loaded.tokenizer, "eos_token_id", None)
    with torch.no_grad(), _attached(cache, model):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=1, do_sample=False, num_beams=1, pad_token_id=eos,
                             **cache_kwargs(model, cache))
    return [int(t) for t in out[0, ids.shape[1]:]]


def first_step_attention(loaded: LoadedModel, ids: torch.Tensor, first: int, cache: Any) -> torch.Tensor:
    """Attention probabilities [layers, heads, L + 1] (float64) of the decode step that reads token
    ``first`` after prefilling ``ids`` [1, L] into ``cache``: its query over the prompt and itself."""
    model, probs = loaded.model, {}
    quantized = isinstance(cache, HeadQCache)
    if quantized:
        for layer in cache.quant_layers:
            layer.kernel = "off"  # attention reads the dequantized keys, which the probabilities need

    def record(call: AttentionCall) -> torch.Tensor:
        if call.query.shape[-2] == 1:
            logits = call.finish(call.raw_scores())  # [1, heads, 1, n]
            probs[call.layer] = torch.softmax(logits.double(), dim=-1)[0, :, 0]
        return cache.quant_layers[call.layer].attend(call) if quantized else fused_attention(call)

    step = torch.tensor([[first]], device=ids.device)
    with torch.no_grad(), _attached(cache, model), attention_handler(model, record):
        model(ids, use_cache=True, **cache_kwargs(model, cache))
        model(step, use_cache=True, **cache_kwargs(model, cache))
    return torch.stack([probs[layer] for layer in range(len(probs))]).cpu()


def needle_mass(probs: torch.Tensor, start: int, tokens: int) -> torch.Tensor:
    """Attention mass [layers, heads] on the needle's tokens ``[start, start + tokens)`` of
    ``probs`` [layers, heads, n]."""
    return probs[..., start : start + tokens].sum(-1)


def attention_kl(dense: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """KL(dense ‖ quantized) [layers, heads] of probabilities [layers, heads, n] (0 log 0 = 0)."""
    terms = dense * (dense.clamp_min(1e-300).log() - quantized.clamp_min(1e-300).log())
    return torch.where(dense > 0, terms, torch.zeros_like(terms)).sum(-1).clamp_min(0.0)


def head_rows(run: str, prompt: dict[str, Any], dense: torch.Tensor, quantized: torch.Tensor,
              kv_heads: int) -> list[dict[str, Any]]:
    """One row per (layer, query head) of ``run`` on ``prompt`` (its ``describe()``): needle mass
    dense and quantized, the mass lost (dense - quantized) and ``attn_kl``, from the first-step
    probabilities [layers, heads, n] of the dense and the quantized cache."""
    start, tokens = prompt["needle_start"], prompt["needle_tokens"]
    mass_dense, mass = needle_mass(dense, start, tokens), needle_mass(quantized, start, tokens)
    kl = attention_kl(dense, quantized)
    layers, heads = mass.shape
    groups = heads // kv_heads
    return [{"run": run, "layer": layer, "head": head, "kv_head": head // groups,
             "attn_kl": float(kl[layer, head]), "prompt": prompt["index"], "length": prompt["length"],
             "depth": prompt["depth"], "needle_mass_dense": float(mass_dense[layer, head]),
             "needle_mass": float(mass[layer, head]),
             "needle_mass_lost": float(mass_dense[layer, head] - mass[layer, head])}
            for layer in range(layers) for head in range(heads)]
