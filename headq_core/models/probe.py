"""Runtime probe for a model type outside the verified list (``adapter.VERIFIED_MODEL_TYPES``).

One short forward (``PROBE_TOKENS`` tokens, batch 1, no grad, eval mode) with the model's own
eager attention (transformers' reference formula), one with the ``headq`` dense handler. The
attention is standard when every decoder layer hands exactly one call with its ``layer_idx`` to the
handler, query [1, q_heads, T, d] and key / value [1, kv_heads, T, d] agree with the config, the
attention modules carry ``layer_idx`` and ``scaling``, and the logits agree.
The verdict is kept on the model object: one probe per model.

Logits tolerance, relative to ``max(1, max |logit|)``: ``max(1e-4, 8 eps)`` of the logits' dtype.
Two correct attentions differ by summation order only: SmolLM2-135M (30 layers, max |logit| 33)
gives 1.4e-6 in float32 (eager vs sdpa alike), 1.6e-2 in bfloat16 and 1.4e-3 in float16, about two
eps. A missing term (attention sinks, ALiBi, a dropped softcap or scale) moves logits by far more.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch

from headq_core.models.attention import (
    AttentionCall,
    attention_modules,
    config_geometry,
    dense_attention,
    implementation,
    routed,
)

PROBE_TOKENS = 8
_VERDICT = "_headq_probe_failure"  # model attribute: None (passed) or why it failed
_log = logging.getLogger(__name__)


def probe_failure(model) -> str | None:
    """Why ``model``'s attention is not standard, or None when the probe passes (probed once)."""
    if _VERDICT not in vars(model):
        failure = _probe(model)
        setattr(model, _VERDICT, failure)
        if failure is None:
            _log.info("model_type %s is not in the verified list; probe passed", model.config.model_type)
    return vars(model)[_VERDICT]


def _probe(model) -> str | None:
    try:
        layers, heads, kv_heads, head_dim = config_geometry(model.config)
    except AttributeError as exc:
        return f"its config does not state the attention geometry ({exc})"
    vocab = model.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, PROBE_TOKENS), generator=gen).to(model.device)
    calls: list[AttentionCall] = []

    def record(call: AttentionCall) -> torch.Tensor:
        calls.append(call)
        return dense_attention(call)

    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            with implementation(model, "eager"):  # the reference formula (sdpa may skip a softcap)
                ref = model(ids, use_cache=False).logits
            try:
                with routed(model, record):
                    out = model(ids, use_cache=False).logits
            except Exception as exc:  # whatever breaks under headq: the model is not standard
                return f"the forward pass with the headq attention raised {type(exc).__name__}: {exc}"
    finally:
        model.train(training)
    expected = ((1, heads, PROBE_TOKENS, head_dim), (1, kv_heads, PROBE_TOKENS, head_dim))
    return (_dispatch_failure(model, calls, layers) or _shape_failure(calls, expected)
            or _logits_failure(out, ref))


def _dispatch_failure(model, calls: list[AttentionCall], layers: int) -> str | None:
    """Exactly one attention call per decoder layer 0..layers-1, from modules carrying the scale."""
    counts = Counter(call.layer for call in calls)
    missing = [i for i in range(layers) if counts[i] == 0]
    if missing:
        return f"layer(s) {missing} never reached the attention interface"
    odd = {i: n for i, n in sorted(counts.items()) if n != 1 or i >= layers}
    if odd:
        return f"attention calls per layer_idx {odd}, expected one for each of layers 0..{layers - 1}"
    if list(attention_modules(model)) != list(range(layers)):
        return "its attention modules do not carry layer_idx and scaling for every layer"
    return None


def _shape_failure(calls: list[AttentionCall], expected: tuple[tuple[int, ...], ...]) -> str | None:
    """Query [1, q_heads, T, d], key and value [1, kv_heads, T, d] as the config says."""
    q_shape, kv_shape = expected
    for call in calls:
        got = (tuple(call.query.shape), tuple(call.key.shape), tuple(call.value.shape))
        if got != (q_shape, kv_shape, kv_shape):
            return (f"layer {call.layer}: query / key / value shapes {got} disagree with the config "
                    f"(expected {q_shape}, {kv_shape}, {kv_shape})")
    return None


def _logits_failure(out: torch.Tensor, ref: torch.Tensor) -> str | None:
    """Logits with the headq dense handler agree with the model's own (tolerance in the docstring)."""
    scale = max(1.0, ref.abs().max().item())
    diff = (out.double() - ref.double()).abs().max().item()
    tol = max(1e-4, 8 * torch.finfo(ref.dtype).eps)
    if not diff <= tol * scale:  # also catches NaN
        return (f"logits differ by {diff:.3g} from the model's own eager attention "
                f"(allowed {tol * scale:.3g}: {tol:.3g} of max(1, max |logit|) in {ref.dtype})")
    return None
