"""Which attention a run's windows go through, and the handler that computes it.

- ``materialised``: :class:`~headq_core.evaluation.run_attention.RunAttention`, ``[L, L]`` float32
  logits, per-head metrics over every query row: the reference.
- ``blockwise``: :class:`~headq_core.evaluation.blockwise_attention.BlockwiseRunAttention`, blocks of
  query rows in O(L) memory, float32 logits, metrics over a seeded sample of rows.
- ``fused``: :class:`~headq_core.evaluation.fused_attention.FusedRunAttention`, the blockwise path
  whose output comes from one FlexAttention kernel in the model's dtype (a GPU's fast path).

``auto`` runs materialised when per-head metrics are wanted on a window of at most
``LONG_WINDOW`` tokens, else fused on a GPU and blockwise on a CPU. The O(L) paths run a verified
model under ``structural_masks``: transformers builds no ``[L, L]`` mask for them.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from headq_core.config import RunSpec
from headq_core.evaluation.blockwise_attention import BlockwiseRunAttention
from headq_core.evaluation.calibrate import Calibration
from headq_core.evaluation.fused_attention import FusedRunAttention
from headq_core.evaluation.run_attention import MetricsSink, RunAttention
from headq_core.models.adapter import VERIFIED_MODEL_TYPES
from headq_core.models.attention import AttentionCall, structural_masks

ATTENTION_PATHS = ("auto", "materialised", "blockwise", "fused")
LONG_WINDOW = 2048  # auto: longer windows always run on an O(L) path
HEAD_ROWS = 256  # query rows per window sampled for per-head metrics on the O(L) paths


def attention_path(attention: str, window: int, metrics: bool, device: torch.device | str = "cpu") -> str:
    """The path of a batch of windows on ``device`` (module docstring)."""
    if attention not in ATTENTION_PATHS:
        raise ValueError(f"attention: must be one of {ATTENTION_PATHS}, got {attention!r}")
    if attention != "auto":
        return attention
    if metrics and window <= LONG_WINDOW:
        return "materialised"
    return "fused" if torch.device(device).type == "cuda" else "blockwise"


def mask_context(model, path: str) -> AbstractContextManager[Any]:
    """``structural_masks`` for a verified model on an O(L) path, else nothing."""
    verified = getattr(model.config, "model_type", None) in VERIFIED_MODEL_TYPES
    return structural_masks() if verified and path != "materialised" else nullcontext()


def _handler(run: RunSpec, path: str, calibration: Calibration | None, sink: MetricsSink | None,
             rows: torch.Tensor | None, window: int) -> RunAttention:
    """The attention handler of ``run`` on ``path``, reading ``calibration``'s basis, amax and codebooks; O(L)
    metrics use the sampled ``rows`` (every row when the sample would cover the window)."""
    basis_for = None if calibration is None else calibration.layer_basis
    static_for = None if calibration is None else calibration.layer_static
    if path == "materialised":
        return RunAttention(run, basis_for=basis_for, static_for=static_for, sink=sink)
    rows = torch.arange(window) if sink is not None and rows is None else rows
    kind = FusedRunAttention if path == "fused" else BlockwiseRunAttention
    return kind(run, basis_for=basis_for, static_for=static_for, sink=sink, rows=rows)


class ExactSlidingLayers:
    """A run with ``sliding_layers="full_precision"``: its own handler on the full-attention layers,
    the same handler of the run without quantizers on the sliding ``layers`` (their metrics are 0)."""

    def __init__(self, quantized: RunAttention, exact: RunAttention, layers: set[int]) -> None:
        self.quantized, self.exact, self.layers = quantized, exact, layers

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        """[b, hq, L, d] attention output of layer ``call.layer``."""
        return (self.exact if call.layer in self.layers else self.quantized)(call)


def run_handler(run: RunSpec, sliding: set[int], *args: Any) -> RunAttention | ExactSlidingLayers:
    """The handler of ``run`` (``_handler``'s arguments), its ``sliding`` layers kept exact when the
    run asks."""
    handler = _handler(run, *args)
    if run.sliding_layers != "full_precision" or not sliding:
        return handler
    return ExactSlidingLayers(handler, _handler(RunSpec(run.name), *args), sliding)
