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
plain causal / sliding (padding, non-verified families) falls back to the blockwise path; an A² value
policy's column sums and the per-head metrics' rows come from the blockwise passes as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from headq_core.evaluation.blockwise_attention import BlockwiseRunAttention
from headq_core.models.attention import AttentionCall

ScoreMod = Callable[..., torch.Tensor]


@functools.cache
def _flex(compiled: bool) -> Callable[..., torch.Tensor]:
    """FlexAttention, compiled once per process for a GPU."""
    from torch.nn.attention.flex_attention import flex_attention

    kernel: Callable[..., torch.Tensor] = flex_attention
    return torch.compile(kernel, dynamic=False) if compiled else kernel


def _softcap(cap: float) -> ScoreMod:
    """Score modification ``cap * tanh(s / cap)`` (the model's logit softcap, after the scale)."""

    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.tanh(score / cap) * cap

    return score_mod


def segment_mask(length: int, key_counts: torch.Tensor, value_counts: torch.Tensor,
                 key_quantized: torch.Tensor, value_quantized: torch.Tensor,
                 sliding_window: int | None) -> Callable[..., torch.Tensor]:
    """FlexAttention ``mask_mod`` over segments of ``length`` positions: query ``q`` reads position
    ``j`` of segment ``s`` iff ``j <= q`` (within ``sliding_window``), ``(j < key_counts[q]) ==
    key_quantized[s]`` and ``(j < value_counts[q]) == value_quantized[s]``. ``key_counts`` /
    ``value_counts`` int64 [L] (the decode rule, zeros for an exact side), ``*_quantized`` bool [S]."""

    def mask_mod(b, h, q_idx, kv_idx):
        seg = kv_idx // length
        j = kv_idx - seg * length
        ok = (j <= q_idx) & ((j < key_counts[q_idx]) == key_quantized[seg])
        ok = ok & ((j < value_counts[q_idx]) == value_quantized[seg])
        if sliding_window is not None:
            ok = ok & (j > q_idx - sliding_window)
        return ok

    return mask_mod


class FusedRunAttention(BlockwiseRunAttention):
    """:class:`BlockwiseRunAttention` whose output comes from one FlexAttention call (module docstring)."""

    def _read(self, call: AttentionCall, key_eff: torch.Tensor | None, value_hat: torch.Tensor | None,
              blocks: list[tuple[int, int, int]]) -> torch.Tensor:
        """The attention output [b, hq, L, d] (query dtype)."""
        if call.mask is not None:  # not a plain causal / sliding mask: the blockwise reads
            return super()._read(call, key_eff, value_hat, blocks)
        from torch.nn.attention.flex_attention import create_block_mask

        q = call.query
        dt, device, length = q.dtype, q.device, q.shape[-2]
        keys = [call.key] if key_eff is None else [key_eff, call.key]
        values = [call.value] if value_hat is None else [value_hat, call.value]
        # segment s reads key variant s // len(values) (0: quantized if any) and value s % len(values)
        pairs = [(ki, vi) for ki in range(len(keys)) for vi in range(len(values))]
        k_cat = torch.cat([keys[ki].to(dt) for ki, _ in pairs], dim=-2)
        v_cat = torch.cat([values[vi].to(dt) for _, vi in pairs], dim=-2)
        flags = torch.tensor([[ki == 0 and key_eff is not None, vi == 0 and value_hat is not None]
                              for ki, vi in pairs], dtype=torch.bool, device=device)
        counts = [rule.count_tensor for rule in self._rules]
        mask_mod = segment_mask(length, counts[0], counts[1], flags[:, 0].contiguous(),
                                flags[:, 1].contiguous(), call.sliding_window)
        compiled = q.is_cuda
        block_mask = create_block_mask(mask_mod, None, None, length, len(pairs) * length,
                                       device=device, _compile=compiled)
        score_mod = None if call.softcap is None else _softcap(call.softcap)
        out = _flex(compiled)(q, k_cat, v_cat, score_mod=score_mod, block_mask=block_mask,
                              scale=call.scaling, enable_gqa=call.groups > 1)
        return out.to(q.dtype)
