"""A² value weights and the A² value policy (METHOD.md, "Values").

``A2_j = sum over queries t >= j and over the query heads of the group of a_tj**2`` [B, Hkv, S].
The policy keeps a ``fraction`` of tokens at ``high_bits``:

- ``oracle`` (analysis only): A² over the whole window, exact top-k per (batch, KV head),
  ``k = round(fraction * S)``.
- ``online`` (causal): token j's score is the A² it received up to and including its leave step
  (the decode step at which it first is read in quantized form, ``j + residual`` for per_token
  values; :func:`headq_core.method.schedule.leave_step`), each step's attention taken relative to uniform
  attention over the keys that step sees (``(t + 1) * a_tj``). It is kept iff fewer than
  ``fraction * (j + 1)`` tokens ``i <= j`` have a strictly larger score: a running-quantile rule,
  final once made. Tokens that never leave within the window are scored with all the attention
  they received. The relative scale matters: raw attention shrinks like ``1 / t`` as the context
  grows, so raw scores of later tokens rarely beat earlier ones and the running quantile would keep
  far fewer tokens than the budget (about 1% for a 10% budget on random causal attention).
  :class:`OnlineA2` applies the same rule step by step inside a decode loop.

Scores are accumulated in float64 so the vectorised and step-by-step forms agree exactly.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from headq_core.config import QuantConfig, ValuePolicyConfig
from headq_core.method.quant import fake_quantize
from headq_core.method.schedule import leave_step


def a2_weights(attn: torch.Tensor, kv_heads: int, *, until: torch.Tensor | None = None,
               offset: int = 0, relative: bool = False) -> torch.Tensor:
    """Sum of a_tj**2 over the given rows and the group's query heads: attn [B, Hq, T, S] (rows at
    absolute positions ``offset + t``) -> float64 [B, Hkv, S]. With ``until`` int64 [S], row t
    counts for token j only when ``offset + t <= until[j]``; ``relative`` scales row t by
    ``offset + t + 1`` (attention relative to uniform). Sum the results of row blocks."""
    b, hq, t, s = attn.shape
    if kv_heads < 1 or hq % kv_heads:
        raise ValueError(f"kv_heads: {kv_heads} must divide q_heads {hq}")
    rows = torch.arange(t, device=attn.device) + offset
    a = attn.to(torch.float64)
    if relative:
        a = a * (rows + 1).to(torch.float64).unsqueeze(1)
    sq = a.square().reshape(b, kv_heads, hq // kv_heads, t, s).sum(2)
    if until is not None:
        sq = sq * (rows.unsqueeze(1) <= until.to(attn.device).unsqueeze(0))
    return sq.sum(2)


def online_scores(attn: torch.Tensor, kv_heads: int, value_cfg: QuantConfig,
                  block: int = 128) -> torch.Tensor:
    """Online A² scores float64 [B, Hkv, S] from the attention of every step, attn [B, Hq, S, S]
    (causal). Token j counts rows j..leave_step(j) only, so each block of ``block`` tokens reads
    just that band of rows (rows above the diagonal hold zero attention)."""
    b, _, t, s = attn.shape
    if t != s:
        raise ValueError(f"attn: online scores need every decode step (T == S), got {tuple(attn.shape)}")
    until = leave_step(torch.arange(s), value_cfg)  # nondecreasing in j
    out = torch.empty(b, kv_heads, s, dtype=torch.float64, device=attn.device)
    for j0 in range(0, s, block):
        j1 = min(s, j0 + block)
        r1 = min(s, int(until[j1 - 1]) + 1)
        out[..., j0:j1] = a2_weights(attn[..., j0:r1, j0:j1], kv_heads, until=until[j0:j1],
                                     offset=j0, relative=True)
    return out


def online_keep_decision(score: torch.Tensor, earlier: torch.Tensor, position: int,
                         fraction: float) -> torch.Tensor:
    """Decision for token ``position``: score [...], earlier [..., position] (scores of tokens
    0..position-1) -> bool [...]: kept iff fewer than fraction*(position+1) have a larger score."""
    larger = (earlier > score.unsqueeze(-1)).sum(-1)
    return larger < fraction * (position + 1)


def online_keep_mask(scores: torch.Tensor, fraction: float, block: int = 256) -> torch.Tensor:
    """Vectorised running-quantile rule: scores [B, Hkv, S] -> bool keep mask [B, Hkv, S]."""
    s = scores.shape[-1]
    out = torch.empty(scores.shape, dtype=torch.bool, device=scores.device)
    idx = torch.arange(s, device=scores.device)
    for j0 in range(0, s, block):
        j = idx[j0:j0 + block]
        larger = (scores.unsqueeze(-2) > scores[..., j].unsqueeze(-1)) & (idx.unsqueeze(0) < j.unsqueeze(1))
        out[..., j0:j0 + block] = larger.sum(-1) < fraction * (j + 1).to(torch.float64)  # as in Python
    return out


def oracle_keep_mask(a2: torch.Tensor, fraction: float) -> torch.Tensor:
    """Exact top-k of A² per (batch, KV head): a2 [B, Hkv, S] -> bool [B, Hkv, S], k = round(f*S)."""
    k = int(round(fraction * a2.shape[-1]))
    keep = torch.zeros(a2.shape, dtype=torch.bool, device=a2.device)
    if k:
        keep.scatter_(-1, a2.topk(k, dim=-1).indices, True)
    return keep


def value_keep_mask(attn: torch.Tensor, kv_heads: int, policy: ValuePolicyConfig,
                    value_cfg: QuantConfig) -> torch.Tensor:
    """The policy's keep mask bool [B, Hkv, S] from the dense attention [B, Hq, S, S]."""
    fraction = policy.fraction_for(value_cfg.bits)
    if policy.mode == "oracle":
        return oracle_keep_mask(a2_weights(attn, kv_heads), fraction)
    return online_keep_mask(online_scores(attn, kv_heads, value_cfg), fraction)


def mixed_fake_quantize(v: torch.Tensor, value_cfg: QuantConfig, keep: torch.Tensor,
                        high_bits: int) -> torch.Tensor:
    """v [B, Hkv, S, d] quantized at ``high_bits`` where ``keep`` [B, Hkv, S] else at the
    quantizer's bits (16 = kept exact). Each precision uses the quantizer's own layout."""
    low = fake_quantize(v, value_cfg)
    high = v if high_bits == 16 else fake_quantize(v, replace(value_cfg, bits=high_bits))
    return torch.where(keep.unsqueeze(-1), high, low)


class OnlineA2:
    """Step-by-step online policy for a decode loop (same rule as :func:`online_keep_mask`).

    Each step: :meth:`observe` the step's attention, then :meth:`decide` every token whose leave
    step it is (``schedule.leave_step``), in position order. Frozen scores live in one buffer that
    doubles when full, so a decision costs one vectorised comparison with the earlier scores.
    """

    def __init__(self, kv_heads: int, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction: must lie in [0, 1], got {fraction!r}")
        self.kv_heads, self.fraction = kv_heads, fraction
        self.running: torch.Tensor | None = None  # float64 [B, Hkv, S_seen]
        self._final: torch.Tensor | None = None  # float64 [B, Hkv, capacity]: frozen scores, in order
        self.decided = 0  # tokens 0..decided-1 have their frozen score in _final

    def observe(self, attn: torch.Tensor) -> None:
        """Add one step's attention attn [B, Hq, q, S_now] (S_now grows by the new tokens)."""
        add = a2_weights(attn, self.kv_heads, offset=attn.shape[-1] - attn.shape[-2], relative=True)
        if self.running is not None:
            add[..., : self.running.shape[-1]] += self.running
        self.running = add

    def decide(self, position: int) -> torch.Tensor:
        """Freeze token ``position``'s score and return its keep decision bool [B, Hkv]."""
        if position != self.decided or self.running is None or position >= self.running.shape[-1]:
            raise ValueError(f"position: tokens are decided in order once seen; next is {self.decided}")
        score = self.running[..., position]
        if self._final is None or position == self._final.shape[-1]:
            grown = score.new_empty(*score.shape, max(64, 2 * position))
            if self._final is not None:
                grown[..., :position] = self._final
            self._final = grown
        self._final[..., position] = score
        self.decided += 1
        return online_keep_decision(score, self._final[..., :position], position, self.fraction)
