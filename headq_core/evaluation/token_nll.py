"""Per-token NLL of a window without the full ``[L, vocab]`` logits: the LM head over chunks of the
final hidden states.

The model runs once with ``logits_to_keep=1`` while a hook keeps the base model's last hidden state
[b, L, hidden]; the head (the output embedding, then the family's final logit scale or softcap) is
applied ``chunk`` positions at a time. The model's own logit of the last position checks the head:
a family whose head does more than this module knows falls back to the full logits.
"""

from __future__ import annotations

import logging

import torch

CHUNK = 1024  # positions per LM-head chunk
_log = logging.getLogger(__name__)


def head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits [..., vocab] of final hidden states [..., hidden]: the output embedding, then Cohere's
    ``logit_scale``, Granite's ``logits_scaling`` and Gemma's final softcap where the model has them."""
    logits = model.get_output_embeddings()(hidden)
    config = model.config
    if getattr(model, "logit_scale", None) is not None:
        logits = logits * model.logit_scale
    if getattr(config, "logits_scaling", None) is not None:
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """float64 [b, n] NLL of targets [b, n] under logits [b, n, vocab]."""
    return torch.nn.functional.cross_entropy(
        logits.transpose(1, 2).float(), targets, reduction="none").double()


def token_nll(model, ids: torch.Tensor, first: int, chunk: int = CHUNK) -> torch.Tensor:
    """NLL float64 [b, L - first] (on ``ids``' device) of ``ids`` [b, L] from position ``first`` on,
    each predicted by the position before it: one forward pass, the LM head in chunks."""
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk: must be a positive integer, got {chunk!r}")
    kept: list[torch.Tensor] = []
    hook = model.base_model.register_forward_hook(lambda _m, _i, out: kept.append(out[0]))
    try:
        last = model(ids, use_cache=False, logits_to_keep=1).logits[:, -1]
    finally:
        hook.remove()
    hidden = kept[-1]
    mine = head_logits(model, hidden[:, -1])
    if not torch.allclose(mine.float(), last.float(), rtol=1e-4, atol=1e-4):
        _log.warning("%s: its LM head is not the known one; computing the full logits",
                     type(model).__name__)
        return _nll(model(ids, use_cache=False).logits[:, first - 1 : -1], ids[:, first:])
    out = torch.empty(ids.shape[0], ids.shape[1] - first, dtype=torch.float64, device=ids.device)
    for p0 in range(first - 1, ids.shape[1] - 1, chunk):
        p1 = min(ids.shape[1] - 1, p0 + chunk)
        logits = head_logits(model, hidden[:, p0:p1])
        out[:, p0 - first + 1 : p1 - first + 1] = _nll(logits, ids[:, p0 + 1 : p1 + 1])
    return out
