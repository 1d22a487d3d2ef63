"""The attention of one evaluated configuration (a :class:`RunSpec`) inside a teacher-forced window.

Decode-exact: query ``t`` reads key ``j`` in quantized form iff ``schedule.decode_mask`` says so
(complete group of G, older than the R most recent tokens), else exactly. A token's quantized form
depends only on its own group, so it is computed once for the whole window (tokens past
``quantized_count(L)`` are never read quantized and stay exact). Quantizing layer ``l`` changes the
inputs of layer ``l + 1``, so each run has its own forward pass; its per-head metrics compare, on
that run's own inputs, the dense logits with the quantized ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from headq_core.config import RunSpec
from headq_core.headq import (
    correction_keys,
    decode_side,
    encode_side,
    key_pca_basis,
    logit_correction,
    random_basis,
)
from headq_core.intervention import perturb_keys
from headq_core.models.adapter import AttentionCall
from headq_core.quant import fake_quantize
from headq_core.schedule import decode_mask, quantized_count
from headq_core.values import mixed_fake_quantize, value_keep_mask


@dataclass
class LayerView:
    """What the metrics see of one layer of one run.

    raw_dense / raw: softcapped logits before the mask [b, hq, L, L], dense / as the run reads them;
    key_mask / value_mask: bool [L, L] decode masks; key_eff: the keys the queries effectively see
    (k^ + sign U c^ for HeadQ) [b, hkv, L, d]; value_hat: quantized values or None when dense."""

    call: AttentionCall
    raw_dense: torch.Tensor
    raw: torch.Tensor
    key_mask: torch.Tensor
    key_eff: torch.Tensor
    value_mask: torch.Tensor
    value_hat: torch.Tensor | None


MetricsSink = Callable[[LayerView], None]


class RunAttention:
    """Attention handler (``models.adapter``) for ``run``; ``basis_for(layer, rank)`` gives the
    calibration's query basis [kv_heads, d, rank]; ``sink`` receives a :class:`LayerView` per layer."""

    def __init__(
        self,
        run: RunSpec,
        *,
        basis_for: Callable[[int, int], torch.Tensor] | None = None,
        sink: MetricsSink | None = None,
    ) -> None:
        needs_basis = (
            run.headq is not None and run.headq.basis == "query_pca"
        ) or run.intervention is not None
        if needs_basis and basis_for is None:
            raise ValueError(f"calibration: run {run.name!r} needs a calibration (query basis)")
        self.run, self.basis_for, self.sink = run, basis_for, sink

    def _keys(self, call: AttentionCall, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw logits of the run's keys with the HeadQ term [b, hq, L, L], effective keys [b, hkv, L, d])."""
        cfg, k = self.run.key, call.key.to(call.work_dtype)
        assert cfg is not None
        k_hat = fake_quantize(k, cfg)
        basis_for = self.basis_for
        if self.run.intervention is not None:
            assert basis_for is not None  # checked in __init__
            iv = self.run.intervention
            k_hat = perturb_keys(k, k_hat, basis_for(call.layer, iv.dims), iv)
        raw = call.raw_scores(k_hat)
        hq = self.run.headq
        if hq is None:
            return raw, k_hat
        residual = k - k_hat
        if hq.basis == "query_pca":
            assert basis_for is not None
            basis = basis_for(call.layer, hq.rank).to(k.device)
        elif hq.basis == "key_pca":
            basis = key_pca_basis(residual, hq.rank)
        else:
            basis = random_basis(k.shape[1], k.shape[-1], hq.rank, hq.seed + call.layer).to(k.device)
        # only the quantized_count(L) leading tokens (whole key groups) are ever read quantized;
        # the rest have zero residual and get a zero code
        n_q = quantized_count(k.shape[-2], cfg)
        side = encode_side(residual[..., :n_q, :], basis, hq.side_bits, scale=hq.side_scale,
                           group_size=cfg.group_size)
        c_hat = torch.nn.functional.pad(decode_side(side), (0, 0, 0, k.shape[-2] - n_q))
        raw = raw + logit_correction(call.query, basis, c_hat, call.scaling, hq.sign, mask)
        return raw, k_hat + correction_keys(basis, c_hat, hq.sign)

    def _values(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor | None:
        """Quantized values [b, hkv, L, d] as read once quantized (None for dense values)."""
        cfg, v = self.run.value, call.value.to(call.work_dtype)
        if cfg is None:
            return None
        policy = self.run.value_policy
        if policy is None:
            return fake_quantize(v, cfg)
        # the policy's A² comes from the attention this run's decode loop would see
        keep = value_keep_mask(probs, v.shape[1], policy, cfg)  # bool [b, hkv, L]
        return mixed_fake_quantize(v, cfg, keep, policy.high_bits)

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        """[b, hq, L, d] attention output of this run for one layer."""
        q_len, kv_len = call.query.shape[-2], call.key.shape[-2]
        if q_len != kv_len:
            raise ValueError("window: the teacher-forced evaluator runs without a cache (q_len == kv_len)")
        device = call.query.device
        raw_dense = call.raw_scores()
        k_mask = decode_mask(q_len, kv_len, self.run.key).to(device)
        raw, key_eff = raw_dense, call.key.to(call.work_dtype)
        if self.run.key is not None:
            raw_quant, key_eff = self._keys(call, k_mask)
            raw = torch.where(k_mask, raw_quant, raw_dense)
        probs = torch.softmax(call.finish(raw), dim=-1)
        v_mask = decode_mask(q_len, kv_len, self.run.value).to(device)
        value_hat = self._values(call, probs)
        v = call.value.to(probs.dtype)
        out = probs @ call.expand(v)
        if value_hat is not None:
            out = out + (probs * v_mask) @ call.expand(value_hat.to(probs.dtype) - v)
        if self.sink is not None:
            self.sink(LayerView(call, call.cap(raw_dense), call.cap(raw), k_mask, key_eff, v_mask, value_hat))
        return out.to(call.query.dtype)
