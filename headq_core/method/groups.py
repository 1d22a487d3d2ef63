"""The quantization groups of the ``int`` format: which elements share one scale and zero-point.

``per_channel``: the ``group_size`` consecutive tokens of one channel; ``per_token``: ``group_size``
consecutive channels of one token. :func:`grouped` puts each group on dim -2, so a reduction over
dim -2 gives one figure per group.
"""

from __future__ import annotations

import torch

from headq_core.config import QuantConfig


def grouped(x: torch.Tensor, cfg: QuantConfig) -> torch.Tensor:
    """[..., n, d] -> view with the group on dim -2: per_channel [..., n/G, G, d];
    per_token [..., n, d/G, G] transposed to [..., n, G, d/G]."""
    *lead, n, d = x.shape
    g = cfg.group_size
    if cfg.axis == "per_channel":
        return x.reshape(*lead, n // g, g, d)
    return x.reshape(*lead, n, d // g, g).transpose(-1, -2)


def ungrouped(xg: torch.Tensor, cfg: QuantConfig, n: int, d: int) -> torch.Tensor:
    """Inverse of :func:`grouped`."""
    lead = xg.shape[:-3]
    if cfg.axis == "per_channel":
        return xg.reshape(*lead, n, d)
    return xg.transpose(-1, -2).reshape(*lead, n, d)
