"""The attention of one evaluated configuration (a :class:`RunSpec`) inside a teacher-forced window.

Decode-exact: query ``t`` reads key ``j`` in quantized form iff ``schedule.decode_mask`` says so
(complete group of G, older than the R most recent tokens), else exactly. A token's quantized form
depends only on its own group, so it is computed once for the whole window (tokens past
``quantized_count(L)`` are never read quantized and stay exact). Quantizing layer ``l`` changes the
inputs of layer ``l + 1``, so each run has its own forward pass; its per-head metrics compare, on
that run's own inputs, the dense logits with the quantized ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from headq_core.config import QuantConfig, RunSpec
from headq_core.method.headq import (
    correction_keys,
    decode_side,
    encode_side,
    make_basis,
)
from headq_core.method.intervention import perturb_keys
from headq_core.method.pre_rope import fake_quantize_keys
from headq_core.method.quant import fake_quantize
from headq_core.method.schedule import decode_mask, quantized_count
from headq_core.method.values import mixed_fake_quantize, value_keep_mask
from headq_core.models.attention import AttentionCall


@dataclass
class LayerView:
    """What the metrics see of one layer of one run.

    raw_dense / raw: softcapped logits before the mask [b, hq, R, L], dense / as the run reads them,
    of R query rows: every row (R = L) or the positions ``rows`` int64 [R] (a sample, ascending);
    key_mask / value_mask: bool [R, L] decode masks of those rows; key_eff: the keys the queries
    effectively see (k^ + sign U c^ for HeadQ) [b, hkv, L, d]; value_hat: quantized values or None
    when dense; a2: the dense attention's A² over every row float64 [b, hkv, L] when the caller
    computed it (a row sample would not give it); keep: the tokens an A² value policy keeps at its
    high bits, bool [b, hkv, L] (None without a policy)."""

    call: AttentionCall
    raw_dense: torch.Tensor
    raw: torch.Tensor
    key_mask: torch.Tensor
    key_eff: torch.Tensor
    value_mask: torch.Tensor
    value_hat: torch.Tensor | None
    rows: torch.Tensor | None = None
    a2: torch.Tensor | None = None
    keep: torch.Tensor | None = None


MetricsSink = Callable[[LayerView], None]
BAND_ROWS = 128


def band_blocks(mask: torch.Tensor, rows: int = BAND_ROWS) -> Iterator[tuple[int, int, int]]:
    """``(t0, t1, j0)`` per block of ``rows`` query rows of a decode mask bool [L, L] (a prefix of
    each row, growing with t): rows t0..t1-1 read every key below j0 quantized, so the keys they read
    exactly (causal, ``j <= t``) lie in [j0, t1). Blocks with nothing exact are skipped."""
    counts = mask.sum(-1).tolist()
    for t0 in range(0, mask.shape[0], rows):
        t1 = min(mask.shape[0], t0 + rows)
        if counts[t0] < t1:
            yield t0, t1, int(counts[t0])


def exact_band(call: AttentionCall, raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put the exact logits back into ``raw`` [b, hq, L, L] (quantized-key logits) where ``mask``
    says the key is read exactly: only the band near the diagonal is recomputed. In place."""
    for t0, t1, j0 in band_blocks(mask):
        exact = replace(call, query=call.query[:, :, t0:t1], key=call.key[:, :, j0:t1]).raw_scores()
        block = raw[..., t0:t1, j0:t1]
        block.copy_(torch.where(mask[t0:t1, j0:t1], block, exact))
    return raw


class RunAttention:
    """Attention handler (``models.adapter``) for ``run``; ``basis_for(layer, rank)`` gives the
    calibration's query basis [kv_heads, d, rank], ``static_for(layer, side, cfg)`` what the side's
    format reads from it (``Calibration.layer_static``: the amax of static fp8 scales, a ``nuq``
    codebook); ``sink`` receives a :class:`LayerView` per layer."""

    def __init__(
        self,
        run: RunSpec,
        *,
        basis_for: Callable[[int, int], torch.Tensor] | None = None,
        static_for: Callable[[int, str, QuantConfig | None], dict[str, torch.Tensor]] | None = None,
        sink: MetricsSink | None = None,
    ) -> None:
        needs_basis = (
            run.headq is not None and run.headq.basis == "query_pca"
        ) or run.intervention is not None
        if needs_basis and basis_for is None:
            raise ValueError(f"calibration: run {run.name!r} needs a calibration (query basis)")
        needs = [c.calibrated for c in (run.key, run.value) if c is not None and c.calibrated]
        if static_for is None and needs:
            what = "static fp8 scales" if "amax" in needs else "non-uniform codebooks"
            raise ValueError(f"calibration: run {run.name!r} needs a calibration ({what})")
        self.run, self.basis_for, self.static_for, self.sink = run, basis_for, static_for, sink

    def _static(self, layer: int, side: str) -> dict[str, torch.Tensor]:
        """``fake_quantize``'s keyword arguments from the calibration for the run's ``side`` in
        ``layer`` (the amax of static fp8 scales, a ``nuq`` codebook), else none."""
        cfg = self.run.key if side == "key" else self.run.value
        if cfg is None or cfg.calibrated is None:
            return {}
        assert self.static_for is not None  # checked in __init__
        return self.static_for(layer, side, cfg)

    def _keys(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw logits of the run's keys with the HeadQ term [b, hq, L, L], effective keys [b, hkv, L, d])."""
        key_eff = self.effective_keys(call)
        return call.raw_scores(key_eff), key_eff

    def effective_keys(self, call: AttentionCall) -> torch.Tensor:
        """The keys [b, hkv, L, d] (work dtype) the run's queries see where they read a key quantized.

        HeadQ's logits ``tau <q, k^> + sign tau <U^T q, c^>`` are those of ``tau <q, k^ + sign U c^>``
        (the same numbers, ``headq.correction_keys``; one matmul, no extra [L, L] pass); the caller
        uses them only where the decode rule reads the key quantized. Pre-RoPE keys are quantized
        between ``call.rope``'s rotations (``pre_rope.fake_quantize_keys``)."""
        cfg, k = self.run.key, call.key.to(call.work_dtype)
        assert cfg is not None
        k_hat = fake_quantize_keys(k, cfg, call.rope, None, **self._static(call.layer, "key"))
        basis_for = self.basis_for
        if self.run.intervention is not None:
            assert basis_for is not None  # checked in __init__
            iv = self.run.intervention
            k_hat = perturb_keys(k, k_hat, basis_for(call.layer, iv.dims), iv)
        hq = self.run.headq
        if hq is None:
            return k_hat
        residual = k - k_hat
        query_basis = basis_for(call.layer, hq.rank) if hq.basis == "query_pca" and basis_for else None
        basis = make_basis(hq, call.layer, query_basis=query_basis, residual=residual,
                           kv_heads=k.shape[1], head_dim=k.shape[-1]).to(k.device)
        # only the quantized_count(L) leading tokens (whole key groups) are ever read quantized;
        # the rest have zero residual and get a zero code
        n_q = quantized_count(k.shape[-2], cfg)
        side = encode_side(residual[..., :n_q, :], basis, hq.side_bits, scale=hq.side_scale,
                           group_size=cfg.group_size)
        c_hat = torch.nn.functional.pad(decode_side(side), (0, 0, 0, k.shape[-2] - n_q))
        return k_hat + correction_keys(basis, c_hat, hq.sign)

    def _keep(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor | None:
        """An A² policy's keep mask bool [b, hkv, L] from ``probs`` [b, hq, L, L], the attention this
        run's decode loop sees; None without a policy."""
        policy, cfg = self.run.value_policy, self.run.value
        if policy is None or cfg is None:
            return None
        return value_keep_mask(probs, call.value.shape[1], policy, cfg)

    def quantized_values(self, call: AttentionCall, keep: torch.Tensor | None) -> torch.Tensor | None:
        """Quantized values [b, hkv, L, d] (work dtype; None for dense values): tokens where ``keep``
        bool [b, hkv, L] (the A² policy's choice, needed iff the run has one) at its high bits."""
        cfg, v = self.run.value, call.value.to(call.work_dtype)
        if cfg is None:
            return None
        policy = self.run.value_policy
        if policy is None:
            return fake_quantize(v, cfg, None, **self._static(call.layer, "value"))
        if keep is None:
            raise ValueError(f"value_policy: run {self.run.name!r} needs its keep mask")
        return mixed_fake_quantize(v, cfg, keep, policy.high_bits)

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        """[b, hq, L, d] attention output of this run for one layer."""
        q_len, kv_len = call.query.shape[-2], call.key.shape[-2]
        if q_len != kv_len:
            raise ValueError("window: the teacher-forced evaluator runs without a cache (q_len == kv_len)")
        device = call.query.device
        k_mask = decode_mask(q_len, kv_len, self.run.key).to(device)
        if self.run.key is None:
            raw = raw_dense = call.raw_scores()
            key_eff = call.key.to(call.work_dtype)
        else:
            raw, key_eff = self._keys(call)
            if self.sink is None:  # no metrics: exact logits only where the decode rule reads them
                raw = exact_band(call, raw, k_mask)
            else:
                raw_dense = call.raw_scores()
                raw = torch.where(k_mask, raw, raw_dense)
        probs = torch.softmax(call.finish(raw), dim=-1)
        v_mask = decode_mask(q_len, kv_len, self.run.value).to(device)
        keep = self._keep(call, probs)
        value_hat = self.quantized_values(call, keep)
        v = call.value.to(probs.dtype)
        if value_hat is None:
            out = call.read(probs, v)
        else:  # read every value quantized, then the exact ones of the band
            v_hat = value_hat.to(probs.dtype)
            out = call.read(probs, v_hat)
            for t0, t1, j0 in band_blocks(v_mask):
                exact = probs[..., t0:t1, j0:t1] * ~v_mask[t0:t1, j0:t1]
                out[..., t0:t1, :] += call.read(exact, v[..., j0:t1, :] - v_hat[..., j0:t1, :])
        if self.sink is not None:
            self.sink(LayerView(call, call.cap(raw_dense), call.cap(raw), k_mask, key_eff, v_mask, value_hat,
                                keep=keep))
        return out.to(call.query.dtype)
