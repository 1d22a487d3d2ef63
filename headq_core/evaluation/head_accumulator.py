"""Per-head metrics of one run accumulated over windows (``metrics.HeadMetrics`` per layer, one
additive state per batch of windows so that the windows can be resampled) and turned into the
results document's head rows; optionally the run's A² profile."""

from __future__ import annotations

from typing import Any

import torch

from headq_core.evaluation.metrics import HeadMetrics, metrics_from_state
from headq_core.evaluation.results import compact_list
from headq_core.evaluation.run_attention import LayerView
from headq_core.method.values import a2_weights
from headq_spec.metrics import HEAD_METRICS


class HeadAccumulator:
    """Sums of one run over its windows: per batch of windows (closed by :meth:`close_windows`)
    one state per layer; ``keep_a2`` also sums the dense attention's A² weights per (layer, KV
    head, window position) and, with an A² value policy, how often the policy kept each position."""

    def __init__(self, layers: int, heads: int, kv_heads: int, keep_a2: bool = False) -> None:
        self.layers: list[HeadMetrics | None] = [None] * layers
        self.heads, self.kv_heads, self.keep_a2 = heads, kv_heads, keep_a2
        self.a2: list[torch.Tensor | None] = [None] * layers
        self.kept: list[torch.Tensor | None] = [None] * layers  # windows keeping each position [hkv, L]
        self.windows = [0] * layers
        self.batch_states: list[dict[str, torch.Tensor]] = []

    def add(self, view: LayerView) -> None:
        """Sink for :class:`~headq_core.evaluation.run_attention.RunAttention`: one layer of one window
        (every query row, or the view's sampled rows)."""
        call = view.call
        acc = self.layers[call.layer]
        if acc is None:  # running sums live where the activations are
            acc = self.layers[call.layer] = HeadMetrics(self.heads, self.kv_heads, device=call.query.device)
        acc.add_tensor_error("key_mse", call.key, view.key_eff)
        eps = None
        if view.value_hat is not None:
            acc.add_tensor_error("value_mse", call.value, view.value_hat)
            eps = view.value_hat - call.value.to(view.value_hat.dtype)
        mask = view.call.row_mask(view.rows)
        a = acc.add_logits(view.raw_dense, view.raw, mask, eps=eps, value_mask=view.value_mask)
        if self.keep_a2:
            a2 = (a2_weights(a, self.kv_heads) if view.a2 is None else view.a2).sum(0).cpu()  # [hkv, L]
            previous = self.a2[call.layer]
            self.a2[call.layer] = a2 if previous is None else previous + a2
            self.windows[call.layer] += call.query.shape[0]
            if view.keep is not None:
                kept = view.keep.sum(0).cpu()  # [hkv, L] windows of this batch keeping each position
                before = self.kept[call.layer]
                self.kept[call.layer] = kept if before is None else before + kept

    def close_windows(self) -> None:
        """End a batch of windows: its sums become one state (name -> float64 [layers, ...], zero
        for a layer that saw nothing), the unit the evaluator's bootstrap resamples."""
        states = [None if acc is None else acc.state() for acc in self.layers]
        template = next((st for st in states if st is not None), None)
        if template is None:
            return
        self.batch_states.append({
            name: torch.stack([torch.zeros_like(like) if st is None else st[name] for st in states])
            for name, like in template.items()})
        self.layers = [None] * len(self.layers)

    def stacked_states(self) -> dict[str, torch.Tensor]:
        """Every closed batch's state: name -> float64 [batches, layers, ...]."""
        if not self.batch_states:
            return {}
        return {name: torch.stack([st[name] for st in self.batch_states]) for name in self.batch_states[0]}

    def rows(self, run: str) -> list[dict[str, Any]]:
        """Head rows of docs/contracts.md over every closed batch (value metrics 0 when values are
        dense; layers that saw nothing are left out)."""
        total = {name: sums.sum(0) for name, sums in self.stacked_states().items()}
        if not total:
            return []
        metrics = metrics_from_state(total, self.heads)  # [layers, Hq]
        groups = self.heads // self.kv_heads
        out = []
        for layer in range(len(self.layers)):
            if not bool((total["rows"][layer] > 0).all()):
                continue
            for head in range(self.heads):
                row: dict[str, Any] = {"run": run, "layer": layer, "head": head, "kv_head": head // groups}
                for name in HEAD_METRICS:
                    row[name] = float(metrics[name][layer, head]) if name in metrics else 0.0
                out.append(row)
        return out

    def a2_profile(self) -> list[list[list[float]]]:
        """Mean A² weight per window position: [layer][kv_head][position]."""
        return [[] if a2 is None else compact_list(a2 / n)
                for a2, n in zip(self.a2, self.windows, strict=True)]

    def keep_rate(self) -> list[list[list[float]]] | None:
        """Share of windows in which the A² value policy kept each window position at its high bits:
        [layer][kv_head][position]; None when no policy ran."""
        if all(kept is None for kept in self.kept):
            return None
        return [[] if kept is None else compact_list(kept.double() / n)
                for kept, n in zip(self.kept, self.windows, strict=True)]
