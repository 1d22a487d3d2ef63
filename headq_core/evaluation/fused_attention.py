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
rows' log-sum-exps ``lse_t`` (with a narrow stand-in for the values: only the log-sum-exps are
kept), then the keys attend to the queries (``[k^; k]`` as the queries, the
column mask of :meth:`DecodeSegments.mask_mod`) with the score ``2 (s_tj - lse_t + log w_t)``, whose
log-sum-exp over the rows ``t`` is ``log sum_t (w_t a_tj)^2``. The per-head metrics' sampled rows
come from the blockwise code as before.

A block mask depends only on the window's decode rule, the call kind and the layer's sliding
window, not on the layer's data: a handler builds each one once and every layer reuses it (building
one evaluates the mask at every (query, key) pair, as costly as a layer's attention kernel).
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
LSE_VALUE_DIM = 16  # the values' width in a call whose output is dropped (the kernel's smallest)


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


def segment_pairs(quantized: tuple[bool, bool]) -> list[tuple[int, int]]:
    """(key variant, value variant) of each segment, variant 0 the quantized one of a side that
    ``quantized`` (keys, values) marks, else the only, exact one: 1, 2 or 4 segments."""
    return [(ki, vi) for ki in range(1 + quantized[0]) for vi in range(1 + quantized[1])]


def narrow_values(like: torch.Tensor) -> torch.Tensor:
    """Zeros [..., LSE_VALUE_DIM] standing in for the values [..., d] of a call whose output is dropped."""
    return like.new_zeros(*like.shape[:-1], LSE_VALUE_DIM)


class FusedRunAttention(BlockwiseRunAttention):
    """:class:`BlockwiseRunAttention` whose output, row log-sum-exps and A² column sums come from
    FlexAttention calls (module docstring); with a model mask that is not plain, the blockwise code."""

    def __init__(self, run, **kwargs: Any) -> None:
        super().__init__(run, **kwargs)
        self._block_masks: dict[tuple, Any] = {}  # layout -> BlockMask, shared by every layer

    def _flex(self, call: AttentionCall, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
              block_mask: Any, modify: ScoreMod, gqa: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, log-sum-exp float32) of one FlexAttention call under ``block_mask``."""
        from torch.nn.attention.flex_attention import AuxRequest

        out, aux = _flex(query.is_cuda)(query, keys, values, score_mod=modify, block_mask=block_mask,
                                        scale=call.scaling, enable_gqa=gqa, return_aux=AuxRequest(lse=True))
        return out, aux.lse

    def _block_mask(self, call: AttentionCall, quantized: tuple[bool, bool], transposed: bool,
                    until: torch.Tensor | None = None) -> Any:
        """The BlockMask of the segments of ``quantized`` (keys, values) under the decode rule, rows
        against segments (``transposed``: segments against rows), built at a layout's first layer."""
        length = call.query.shape[-2]
        device = call.query.device
        layout = (length, quantized, transposed, call.sliding_window, until is not None, str(device))
        if layout not in self._block_masks:
            from torch.nn.attention.flex_attention import create_block_mask

            pairs = segment_pairs(quantized)
            flags = torch.tensor([[ki == 0 and quantized[0], vi == 0 and quantized[1]] for ki, vi in pairs],
                                 dtype=torch.bool, device=device)
            segments = DecodeSegments(length, self._counts(0, quantized[0]), flags[:, 0].contiguous(),
                                      self._counts(1, quantized[1]), flags[:, 1].contiguous(),
                                      call.sliding_window, until)
            sizes = (len(pairs) * length, length) if transposed else (length, len(pairs) * length)
            self._block_masks[layout] = create_block_mask(segments.mask_mod(transposed), None, None, *sizes,
                                                          device=device, _compile=device.type == "cuda")
        return self._block_masks[layout]

    def _counts(self, side: int, quantized: bool) -> torch.Tensor:
        """int64 [L]: the decode rule's quantized prefix of each row for ``side`` (0 keys, 1 values)
        where that side is read quantized, else zeros (every position exact)."""
        counts = self._rules[side].count_tensor
        return counts if quantized else torch.zeros_like(counts)

    @staticmethod
    def _concat(call: AttentionCall, variants: list[torch.Tensor], side: int,
                quantized: tuple[bool, bool]) -> torch.Tensor:
        """[b, hkv, S x L, d] (query dtype): each segment's variant of one side (0 keys, 1 values)."""
        dt = call.query.dtype
        return torch.cat([variants[pair[side]].to(dt) for pair in segment_pairs(quantized)], dim=-2)

    def _keys(self, call: AttentionCall, key_eff: torch.Tensor | None, quantized: tuple[bool, bool]
              ) -> torch.Tensor:
        """[b, hkv, S x L, d] (query dtype): each segment's keys, ``key_eff`` where they are quantized."""
        return self._concat(call, [call.key] if key_eff is None else [key_eff, call.key], 0, quantized)

    def _attend(self, call: AttentionCall, key_eff: torch.Tensor | None, value_hat: torch.Tensor | None
                ) -> torch.Tensor:
        """The attention output [b, hq, L, d] (query dtype) of one FlexAttention call."""
        quantized = (key_eff is not None, value_hat is not None)
        keys = self._keys(call, key_eff, quantized)
        variants = [call.value] if value_hat is None else [value_hat, call.value]
        values = self._concat(call, variants, 1, quantized)
        return self._flex(call, call.query, keys, values, self._block_mask(call, quantized, False),
                          score_mod(call.softcap, None), call.groups > 1)[0]

    def _read(self, call: AttentionCall, key_eff: torch.Tensor | None, value_hat: torch.Tensor | None,
              blocks: list[tuple[int, int, int]]) -> torch.Tensor:
        """The attention output [b, hq, L, d] (query dtype)."""
        if call.mask is not None:  # not a plain causal / sliding mask: the blockwise reads
            return super()._read(call, key_eff, value_hat, blocks)
        return self._attend(call, key_eff, value_hat)

    def _a2_scores(self, call: AttentionCall, key_eff: torch.Tensor | None,
                   blocks: list[tuple[int, int, int]], until: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`BlockwiseRunAttention._a2_scores` as two FlexAttention calls: the rows'
        log-sum-exps, then the keys attend to the queries with scores ``2 (s_tj - lse_t + log w_t)``
        (``w_t = t + 1`` with ``until``, else 1), whose log-sum-exp over t is log sum_t (w_t a_tj)²."""
        if call.mask is not None:
            return super()._a2_scores(call, key_eff, blocks, until)
        q, length = call.query, call.query.shape[-2]
        dt = torch.promote_types(q.dtype, torch.float32)  # the kernel's score dtype
        quantized = (key_eff is not None, False)
        keys = self._keys(call, key_eff, quantized)  # the rows' call and the column pass read the same keys
        _, lse = self._flex(call, q, keys, narrow_values(keys), self._block_mask(call, quantized, False),
                            score_mod(call.softcap, None), call.groups > 1)
        log_w = torch.zeros(length, device=q.device, dtype=dt)
        if until is not None:
            log_w = torch.log(torch.arange(1, length + 1, device=q.device, dtype=dt))
        bias = log_w - lse.to(dt)  # [b, hq, L]: per query row t
        keys_as_queries = keys.repeat_interleave(call.groups, dim=1)  # [b, hq, S x L, d]
        column_mask = self._block_mask(call, quantized, True, until)
        _, col = self._flex(call, keys_as_queries, q, narrow_values(q), column_mask,
                            score_mod(call.softcap, bias), False)
        b, hkv = call.key.shape[:2]
        sums = col.double().exp().view(b, hkv, call.groups, len(segment_pairs(quantized)), length)
        return sums.sum(dim=(2, 3))
