"""Decode-exact attention of one run in one fused kernel call: the decode rule as a FlexAttention mask.

For query ``t`` the decode rule reads key ``j`` quantized iff ``j < n_K(t)`` (the run's effective
keys, HeadQ folded in) and value ``j`` quantized iff ``j < n_V(t)``. The kernel sees the run's keys
and values as segments of ``L`` positions, ``[k^; k^; k; k]`` and ``[v^; v; v^; v]`` (only the
segments the run needs: one for dense, two when only keys or only values are quantized), and a mask
under which query ``t`` reads position ``j`` in exactly the segment its decode rule picks, causally
and within the layer's sliding window. One softmax over every segment is then the exact
attention, merged inside the kernel as flash attention merges key blocks: no ``[L, L]`` tensor, and
the block mask skips the blocks a row never reads, so the work is about that of dense causal
attention. The logit softcap is a score modification.

The kernel runs in the model's dtype (bf16 on a GPU, as the dense run's SDPA) with float32
accumulation; the blockwise path (float32 logits) stays the reference the tests compare with. On a
GPU FlexAttention is compiled (``torch.compile``); on a CPU it runs unfused, which materialises
``[q_len, segments x L]`` scores: there the blockwise path is the default. A model mask that is not
plain causal / sliding (padding, non-verified families) falls back to the blockwise path.

A² column sums (an A² value policy's scores, the value metrics' dense A²) are two more calls: the
rows' log-sum-exps ``lse_t``, then the keys attend to the queries (``[k^; k]`` as the queries, the
column mask of :meth:`DecodeSegments.mask_mod`) with the score ``2 (s_tj - lse_t + log w_t)``, whose
log-sum-exp over the rows ``t`` is ``log sum_t (w_t a_tj)^2``. The per-head metrics' sampled rows
come from the blockwise code as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from headq_core.evaluation.blockwise_attention import BlockwiseRunAttention
from headq_core.models.attention import AttentionCall

ScoreMod = Callable[..., torch.Tensor]


# compiled variants a process may hold: a window length x (output, row log-sum-exps, column pass) x
# segment counts x softcap; past torch's default of 8, dynamo would silently fall back to the unfused
# kernel, which materialises [L, S x L] scores (measured: out of memory at a third window length)
RECOMPILE_LIMIT = 256


@functools.cache
def _flex(compiled: bool) -> Callable[..., Any]:
    """FlexAttention, compiled for a GPU (one kernel per window length and call variant)."""
    from torch.nn.attention.flex_attention import flex_attention

    kernel: Callable[..., Any] = flex_attention
    if not compiled:
        return kernel
    compiled_kernel = torch.compile(kernel, dynamic=False)

    def call(*args: Any, **kwargs: Any) -> Any:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return compiled_kernel(*args, **kwargs)

    return call


@dataclass(frozen=True)
class DecodeSegments:
    """Which (segment, position) a query row ``t`` reads: positions ``j`` of segments of ``length``;
    segment ``s`` holds the quantized key iff ``key_quantized[s]`` (value likewise), and row ``t``
    reads key ``j`` quantized iff ``j < key_counts[t]`` (value: ``value_counts``); int64 [L] counts
    (zeros for an exact side), bool [S] flags. ``until`` int64 [L]: row ``t`` counts for ``j`` only
    while ``t <= until[j]`` (the online A² policy's rows), or None."""

    length: int
    key_counts: torch.Tensor
    key_quantized: torch.Tensor
    value_counts: torch.Tensor
    value_quantized: torch.Tensor
    sliding_window: int | None
    until: torch.Tensor | None = None

    def mask_mod(self, transposed: bool = False) -> Callable[..., torch.Tensor]:
        """FlexAttention ``mask_mod``: query ``t`` against position ``s x L + j`` (``transposed``: the
        column pass, the positions as queries against the rows ``t``) is allowed iff ``j <= t``
        (within the sliding window), the segment is the one row ``t`` reads ``j`` in and, with
        ``until``, ``t <= until[j]``. One function for every call, so the compiled kernels' guards see
        the same closure (differing closures broke torch's recompilation guards)."""
        length, until, window = self.length, self.until, self.sliding_window
        key_counts, key_quantized = self.key_counts, self.key_quantized
        value_counts, value_quantized = self.value_counts, self.value_quantized

        def mask_mod(b, h, q_idx, kv_idx):
            pos, t = (q_idx, kv_idx) if transposed else (kv_idx, q_idx)
            seg = pos // length
            j = pos - seg * length
            ok = (j <= t) & ((j < key_counts[t]) == key_quantized[seg])
            ok = ok & ((j < value_counts[t]) == value_quantized[seg])
            if until is not None:
                ok = ok & (t <= until[j])
            if window is not None:
                ok = ok & (j > t - window)
            return ok

        return mask_mod


def score_mod(cap: float | None, bias: torch.Tensor | None) -> ScoreMod:
    """FlexAttention ``score_mod``: the model's logit softcap ``cap * tanh(s / cap)`` (after the
    scale; none if None), then, with ``bias`` [b, hq, L] (the column pass), ``2 (s + bias[b, h, kv])``:
    the log of a squared, weighted probability. One function for every call (see ``mask_mod``)."""

    def modify(score, b, h, q_idx, kv_idx):
        if cap is not None:
            score = torch.tanh(score / cap) * cap
        if bias is not None:
            score = 2 * (score + bias[b, h, kv_idx])
        return score

    return modify


class FusedRunAttention(BlockwiseRunAttention):
    """:class:`BlockwiseRunAttention` whose output, row log-sum-exps and A² column sums come from
    FlexAttention calls (module docstring); with a model mask that is not plain, the blockwise code."""

    def _flex(self, call: AttentionCall, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
              mask_mod, q_len: int, kv_len: int, modify: ScoreMod, gqa: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, log-sum-exp float32) of one FlexAttention call with ``mask_mod`` as block mask."""
        from torch.nn.attention.flex_attention import AuxRequest, create_block_mask

        compiled = query.is_cuda
        block_mask = create_block_mask(mask_mod, None, None, q_len, kv_len, device=query.device,
                                       _compile=compiled)
        out, aux = _flex(compiled)(query, keys, values, score_mod=modify, block_mask=block_mask,
                                   scale=call.scaling, enable_gqa=gqa, return_aux=AuxRequest(lse=True))
        return out, aux.lse

    def _counts(self, side: int, quantized: bool) -> torch.Tensor:
        """int64 [L]: the decode rule's quantized prefix of each row for ``side`` (0 keys, 1 values)
        where that side is read quantized, else zeros (every position exact)."""
        counts = self._rules[side].count_tensor
        return counts if quantized else torch.zeros_like(counts)

    def _segments(self, call: AttentionCall, keys: list[torch.Tensor], values: list[torch.Tensor],
                  quantized: tuple[bool, bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys and values [b, hkv, S x L, d] (model dtype) of every (key, value) variant pair, and
        flags bool [S, 2]: whether the pair's key / value is the quantized variant (index 0)."""
        dt = call.query.dtype
        pairs = [(ki, vi) for ki in range(len(keys)) for vi in range(len(values))]
        k_cat = torch.cat([keys[ki].to(dt) for ki, _ in pairs], dim=-2)
        v_cat = torch.cat([values[vi].to(dt) for _, vi in pairs], dim=-2)
        flags = torch.tensor([[ki == 0 and quantized[0], vi == 0 and quantized[1]] for ki, vi in pairs],
                             dtype=torch.bool, device=call.query.device)
        return k_cat, v_cat, flags

    def _attend(self, call: AttentionCall, key_eff: torch.Tensor | None, value_hat: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention output [b, hq, L, d], log-sum-exp float32 [b, hq, L] of each row's logits)."""
        q, length = call.query, call.query.shape[-2]
        keys = [call.key] if key_eff is None else [key_eff, call.key]
        values = [call.value] if value_hat is None else [value_hat, call.value]
        k_cat, v_cat, flags = self._segments(call, keys, values, (key_eff is not None, value_hat is not None))
        segments = DecodeSegments(length, self._counts(0, key_eff is not None), flags[:, 0].contiguous(),
                                  self._counts(1, value_hat is not None), flags[:, 1].contiguous(),
                                  call.sliding_window)
        return self._flex(call, q, k_cat, v_cat, segments.mask_mod(), length, k_cat.shape[-2],
                          score_mod(call.softcap, None), call.groups > 1)

    def _read(self, call: AttentionCall, key_eff: torch.Tensor | None, value_hat: torch.Tensor | None,
              blocks: list[tuple[int, int, int]]) -> torch.Tensor:
        """The attention output [b, hq, L, d] (query dtype)."""
        if call.mask is not None:  # not a plain causal / sliding mask: the blockwise reads
            return super()._read(call, key_eff, value_hat, blocks)
        return self._attend(call, key_eff, value_hat)[0].to(call.query.dtype)

    def _a2_scores(self, call: AttentionCall, key_eff: torch.Tensor | None,
                   blocks: list[tuple[int, int, int]], until: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`BlockwiseRunAttention._a2_scores` as two FlexAttention calls: the rows'
        log-sum-exps, then the keys attend to the queries with scores ``2 (s_tj - lse_t + log w_t)``
        (``w_t = t + 1`` with ``until``, else 1), whose log-sum-exp over t is log sum_t (w_t a_tj)²."""
        if call.mask is not None:
            return super()._a2_scores(call, key_eff, blocks, until)
        q, length = call.query, call.query.shape[-2]
        dt = torch.promote_types(q.dtype, torch.float32)  # the kernel's score dtype
        lse = self._attend(call, key_eff, None)[1].to(dt)
        log_w = torch.zeros(length, device=q.device, dtype=dt)
        if until is not None:
            log_w = torch.log(torch.arange(1, length + 1, device=q.device, dtype=dt))
        bias = log_w - lse  # [b, hq, L]: per query row t
        keys = [call.key] if key_eff is None else [key_eff, call.key]
        k_cat, _, flags = self._segments(call, keys, [call.value], (key_eff is not None, False))
        segments = DecodeSegments(length, self._counts(0, key_eff is not None), flags[:, 0].contiguous(),
                                  self._counts(1, False), flags[:, 1].contiguous(), call.sliding_window,
                                  until)
        keys_as_queries = k_cat.repeat_interleave(call.groups, dim=1)  # [b, hq, S x L, d]
        _, col = self._flex(call, keys_as_queries, q, q, segments.mask_mod(transposed=True),
                            k_cat.shape[-2], length, score_mod(call.softcap, bias), False)
        b, hkv = call.key.shape[:2]
        sums = col.double().exp().view(b, hkv, call.groups, len(flags), length)
        return sums.sum(dim=(2, 3))
