"""Per-head metrics of one run accumulated over windows (engineer A's ``metrics.HeadMetrics`` per
layer) and turned into the results document's head rows; optionally the run's A² profile."""

from __future__ import annotations

from typing import Any

import torch

from headq_core.evaluation.metrics import HeadMetrics
from headq_core.evaluation.results import compact_list
from headq_core.evaluation.run_attention import LayerView
from headq_core.method.values import a2_weights
from headq_spec.metrics import HEAD_METRICS


class HeadAccumulator:
    """Sums of one run over all windows: per layer a ``HeadMetrics``; ``keep_a2`` also sums the
    dense attention's A² weights per (layer, KV head, window position)."""

    def __init__(self, layers: int, heads: int, kv_heads: int, keep_a2: bool = False) -> None:
        self.layers: list[HeadMetrics | None] = [None] * layers
        self.heads, self.kv_heads, self.keep_a2 = heads, kv_heads, keep_a2
        self.a2: list[torch.Tensor | None] = [None] * layers
        self.windows = [0] * layers

    def add(self, view: LayerView) -> None:
        """Sink for :class:`~headq_core.evaluation.run_attention.RunAttention`: one layer of one window."""
        call = view.call
        acc = self.layers[call.layer]
        if acc is None:  # running sums live where the activations are
            acc = self.layers[call.layer] = HeadMetrics(self.heads, self.kv_heads, device=call.query.device)
        acc.add_tensor_error("key_mse", call.key, view.key_eff)
        eps = None
        if view.value_hat is not None:
            acc.add_tensor_error("value_mse", call.value, view.value_hat)
            eps = view.value_hat - call.value.to(view.value_hat.dtype)
        a = acc.add_logits(view.raw_dense, view.raw, call.mask, eps=eps, value_mask=view.value_mask)
        if self.keep_a2:
            a2 = a2_weights(a, self.kv_heads).sum(0).cpu()  # [hkv, L], summed over the batch
            previous = self.a2[call.layer]
            self.a2[call.layer] = a2 if previous is None else previous + a2
            self.windows[call.layer] += call.query.shape[0]

    def rows(self, run: str) -> list[dict[str, Any]]:
        """Head rows of docs/contracts.md (value metrics 0 when values are dense)."""
        groups = self.heads // self.kv_heads
        out = []
        for layer, acc in enumerate(self.layers):
            result = {} if acc is None else {k: v.cpu() for k, v in acc.result().items()}
            if not result:
                continue
            for head in range(self.heads):
                row: dict[str, Any] = {"run": run, "layer": layer, "head": head, "kv_head": head // groups}
                for name in HEAD_METRICS:
                    row[name] = float(result[name][head]) if name in result else 0.0
                out.append(row)
        return out

    def a2_profile(self) -> list[list[list[float]]]:
        """Mean A² weight per window position: [layer][kv_head][position]."""
        return [[] if a2 is None else compact_list(a2 / n)
                for a2, n in zip(self.a2, self.windows, strict=True)]
