"""Decode-exact attention of one run in O(L) memory: blocks of query rows, each over its keys only.

The decode rule splits the keys of query ``t`` into contiguous ranges: keys ``j < n_K(t)`` read
quantized (the run's effective keys, HeadQ folded in), the rest up to ``t`` exactly; values likewise
split at ``n_V(t)``. A block of rows ``t0..t1-1`` holds the logits of its rows over the keys
``j0..t1-1`` they may read (``j0``: the first key the model's mask allows any of them, later than 0
under a sliding window), quantized keys where the rule says so and exact ones in the band near the
diagonal; the softmax over the whole row is the exact log-sum-exp merge of the key ranges. Memory:
``O(block x L)`` logits, never ``[L, L]``. The value read is ``a v^ + (a * exact) (v - v^)`` over the
exact band. An A² value policy needs the column sums of the run's attention before any value is
read: a first pass over the blocks accumulates them (float64) and a second reads the values.

Per-head metrics come from a sample of query rows (``LayerView.rows``), each exact over all its
keys; with values, the dense attention's A² over every row is accumulated in the blocks.
:class:`~headq_core.evaluation.run_attention.RunAttention` (materialised logits) is the reference.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import replace

import torch

from headq_core.config import QuantConfig
from headq_core.evaluation.run_attention import LayerView, RunAttention
from headq_core.method.schedule import leave_step, quantized_count
from headq_core.method.values import a2_weights, online_keep_mask, oracle_keep_mask
from headq_core.models.attention import AttentionCall

BLOCK_LOGITS = 1 << 24  # logits per block of rows (batch x heads x rows x keys): 64 MiB in float32
BLOCK_LOGITS_CUDA = 1 << 27  # on a GPU: fewer, larger blocks (about 3 GiB of temporaries)


def row_blocks(call: AttentionCall, budget: int = BLOCK_LOGITS) -> Iterator[tuple[int, int, int]]:
    """``(t0, t1, j0)`` per block of query rows: rows t0..t1-1 read only keys j0..t1-1 (causal;
    ``j0`` the first key the model's mask allows any of them). About ``budget`` logits a block."""
    b, hq, length, _ = call.query.shape
    rows = max(1, min(length, budget // max(1, b * hq * length)))
    for t0 in range(0, length, rows):
        t1 = min(length, t0 + rows)
        yield t0, t1, _first_key(call, t0, t1)


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    return mask > torch.finfo(mask.dtype).min / 2


def _first_key(call: AttentionCall, t0: int, t1: int) -> int:
    """First key any row t0..t1-1 may read; a mask that lets a row read a later key is refused."""
    if call.mask is None:  # causal, within the sliding window
        return 0 if call.sliding_window is None else max(0, t0 - call.sliding_window + 1)
    if t1 < call.mask.shape[-1] and bool(_allowed(call.mask[..., t0:t1, t1:]).any()):
        raise ValueError("attention: the blockwise path needs a causal mask (a query reads a later key)")
    cols = _allowed(call.mask[..., t0:t1, :t1]).flatten(0, -2).any(0).nonzero()
    return int(cols[0]) if len(cols) else 0


@functools.lru_cache(maxsize=16)
def decode_counts(length: int, cfg: QuantConfig | None) -> tuple[int, ...]:
    """Per query row t of a window: the keys ``j < count`` it reads quantized, ``quantized_count(t + 1)``
    (row t of ``schedule.decode_mask``)."""
    return tuple(quantized_count(t + 1, cfg) for t in range(length))


class DecodeRule:
    """The decode rule of one side (keys or values) of a window of ``length`` tokens on ``device``."""

    def __init__(self, length: int, cfg: QuantConfig | None, device: torch.device) -> None:
        self.counts = decode_counts(length, cfg)
        self.count_tensor = torch.tensor(self.counts, dtype=torch.long, device=device)
        self._cols = torch.arange(length, device=device)

    def block(self, t0: int, t1: int, j0: int) -> torch.Tensor:
        """bool [t1 - t0, t1 - j0]: where rows t0..t1-1 read keys j0..t1-1 quantized."""
        return self._cols[j0:t1].unsqueeze(0) < self.count_tensor[t0:t1].unsqueeze(1)

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """bool [R, L]: where the query positions ``rows`` int64 [R] read each key quantized."""
        return self._cols.unsqueeze(0) < self.count_tensor[rows.to(self.count_tensor.device)].unsqueeze(1)


class BlockwiseRunAttention(RunAttention):
    """:class:`RunAttention` in blocks of query rows (module docstring). ``rows`` int64 [R]: the
    query positions whose per-head metrics go to ``sink`` (needed with a sink); ``budget``: logits
    per block (default ``BLOCK_LOGITS``, ``BLOCK_LOGITS_CUDA`` on a GPU)."""

    def __init__(self, run, *, basis_for=None, static_for=None, sink=None, rows: torch.Tensor | None = None,
                 budget: int | None = None) -> None:
        super().__init__(run, basis_for=basis_for, static_for=static_for, sink=sink)
        if sink is not None and rows is None:
            raise ValueError("head_rows: the blockwise path computes metrics on sampled rows only")
        self.rows, self.budget = rows, budget
        self._rules: tuple[DecodeRule, ...] = ()  # (keys, values) of the current call
        self._rules_by_length: dict[tuple[int, str], tuple[DecodeRule, DecodeRule]] = {}

    def _decode_rules(self, length: int, device: torch.device) -> tuple[DecodeRule, DecodeRule]:
        """The (keys, values) decode rules of a window of ``length`` tokens, built once for every layer."""
        key = (length, str(device))
        if key not in self._rules_by_length:
            self._rules_by_length[key] = (DecodeRule(length, self.run.key, device),
                                          DecodeRule(length, self.run.value, device))
        return self._rules_by_length[key]

    def _block_raw(self, call: AttentionCall, key_eff: torch.Tensor | None, block: tuple[int, int, int]
                   ) -> torch.Tensor:
        """Raw logits [b, hq, t1 - t0, t1 - j0] of the block as the run reads them (no cap, no mask);
        ``call.key`` and ``key_eff`` (None: dense keys) in the work dtype."""
        t0, t1, j0 = block
        sub = replace(call, query=call.query[:, :, t0:t1])
        if key_eff is None:
            return sub.raw_scores(call.key[..., j0:t1, :])
        raw = sub.raw_scores(key_eff[..., j0:t1, :])
        rule = self._rules[0]
        jx = max(j0, rule.counts[t0])  # first key some row of the block reads exactly
        if jx < t1:
            exact = sub.raw_scores(call.key[..., jx:t1, :])
            band = raw[..., jx - j0:]
            band.copy_(torch.where(rule.block(t0, t1, jx), band, exact))
        return raw

    def _probs(self, call: AttentionCall, raw: torch.Tensor, block: tuple[int, int, int]) -> torch.Tensor:
        """Softmax [b, hq, T, S] of raw block logits with the model's softcap and mask (causal if none)."""
        t0, t1, j0 = block
        logits = call.cap(raw)
        if call.mask is not None:
            logits = logits + call.mask[..., t0:t1, j0:t1].to(logits.dtype)
        else:
            allowed = call.row_mask(torch.arange(t0, t1, device=raw.device))[..., j0:t1]
            logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
        return torch.softmax(logits, dim=-1)

    def _keep_mask(self, call: AttentionCall, key_eff: torch.Tensor | None,
                   blocks: list[tuple[int, int, int]]) -> torch.Tensor | None:
        """The A² policy's keep mask bool [b, hkv, L] from the run's attention, column sums in blocks
        (``values.value_keep_mask`` without the [L, L] attention); None without a policy."""
        policy, cfg = self.run.value_policy, self.run.value
        if policy is None or cfg is None:
            return None
        fraction = policy.fraction_for(cfg.bits)
        if policy.mode == "oracle":
            return oracle_keep_mask(self._a2_scores(call, key_eff, blocks), fraction)
        until = leave_step(torch.arange(call.key.shape[-2]), cfg).to(call.query.device)
        return online_keep_mask(self._a2_scores(call, key_eff, blocks, until), fraction)

    def _a2_scores(self, call: AttentionCall, key_eff: torch.Tensor | None,
                   blocks: list[tuple[int, int, int]], until: torch.Tensor | None = None) -> torch.Tensor:
        """A² column sums float64 [b, hkv, L] of the attention with keys ``key_eff`` (the run's, None:
        dense) over every query row: ``values.a2_weights`` block by block; with ``until`` int64 [L]
        the online policy's (row t counts for token j while ``t <= until[j]``, scaled by t + 1)."""
        hkv = call.key.shape[1]
        scores = torch.zeros(call.value.shape[:3], dtype=torch.float64, device=call.query.device)
        for block in blocks:
            t0, t1, j0 = block
            probs = self._probs(call, self._block_raw(call, key_eff, block), block)
            if until is None:
                scores[..., j0:t1] += a2_weights(probs, hkv, offset=t0)
            else:
                scores[..., j0:t1] += a2_weights(probs, hkv, until=until[j0:t1], offset=t0, relative=True)
        return scores

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        """[b, hq, L, d] attention output of this run for one layer."""
        length = call.key.shape[-2]
        if call.query.shape[-2] != length:
            raise ValueError("window: the teacher-forced evaluator runs without a cache (q_len == kv_len)")
        key_eff = None if self.run.key is None else self.effective_keys(call)
        model_call, call = call, replace(call, key=call.key.to(call.work_dtype))  # converted once
        self._rules = self._decode_rules(length, call.query.device)
        budget = self.budget or (BLOCK_LOGITS_CUDA if call.query.is_cuda else BLOCK_LOGITS)
        blocks = list(row_blocks(call, budget))
        keep = self._keep_mask(call, key_eff, blocks)
        value_hat = self.quantized_values(call, keep)
        out = self._read(call, key_eff, value_hat, blocks)
        if self.sink is not None:
            a2 = None if value_hat is None else self._a2_scores(call, None, blocks)  # the dense A²
            self.sink(replace(self._sampled_view(model_call, key_eff, value_hat, a2), keep=keep))
        return out

    def _read(self, call: AttentionCall, key_eff: torch.Tensor | None, value_hat: torch.Tensor | None,
              blocks: list[tuple[int, int, int]]) -> torch.Tensor:
        """The attention output [b, hq, L, d] (query dtype), block by block of query rows."""
        dt = call.work_dtype
        v = call.value.to(dt)
        v_hat = None if value_hat is None else value_hat.to(dt)
        out = torch.empty(call.query.shape, dtype=call.query.dtype, device=call.query.device)
        for block in blocks:
            t0, t1, j0 = block
            probs = self._probs(call, self._block_raw(call, key_eff, block), block)
            if v_hat is None:
                read = call.read(probs, v[..., j0:t1, :])
            else:
                read = call.read(probs, v_hat[..., j0:t1, :])
                rule = self._rules[1]
                jv = max(j0, rule.counts[t0])  # first value some row reads exactly
                if jv < t1:
                    exact = probs[..., jv - j0:] * ~rule.block(t0, t1, jv)
                    read += call.read(exact, v[..., jv:t1, :] - v_hat[..., jv:t1, :])
            out[:, :, t0:t1] = read.to(out.dtype)
        return out

    def _sampled_view(self, call: AttentionCall, key_eff: torch.Tensor | None,
                      value_hat: torch.Tensor | None, a2: torch.Tensor | None) -> LayerView:
        """The metrics' view of the sampled rows: their logits over every key [b, hq, R, L]."""
        assert self.rows is not None  # checked in __init__
        rows = self.rows
        device = call.query.device
        sub = replace(call, query=call.query[:, :, rows.to(device)])
        raw_dense = sub.raw_scores()
        k_mask = self._rules[0].rows(rows)
        raw = raw_dense if key_eff is None else torch.where(k_mask, sub.raw_scores(key_eff), raw_dense)
        return LayerView(call, call.cap(raw_dense), call.cap(raw), k_mask,
                         call.key.to(call.work_dtype) if key_eff is None else key_eff,
                         self._rules[1].rows(rows), value_hat, rows=rows, a2=a2)
