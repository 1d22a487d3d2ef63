"""Dense-and-sparse outliers (KVQuant): the largest magnitudes of each token group stay exact.

``QuantConfig.outliers`` is a share ``f``. A *token group* is the set of elements quantized together:
per_channel, the G tokens x d channels of one head's key group; per_token, one token's d channels.
In each, the ``ceil(f * elements)`` largest ``|x|`` are the outliers: each is stored as an fp16
value with a 16-bit index (:data:`OUTLIER_BITS`, KVQuant's sparse cost) and left out of the dense
quantizer. Before the codes are computed an outlier is replaced by a neutral value, zero clipped
into the [min, max] of the inliers of its scale group (0 where the group has none), so each scale and
zero-point is that of its inliers; at read time the fp16 value is put back.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from headq_core.config import QuantConfig
from headq_core.method.groups import grouped, ungrouped

OUTLIER_BITS = 16 + 16  # an fp16 value and a 16-bit index per outlier
FP16_MAX = float(torch.finfo(torch.float16).max)


def token_group_elements(cfg: QuantConfig, head_dim: int) -> int:
    """Elements of one token group: ``group_size * head_dim`` per_channel, ``head_dim`` per_token."""
    return cfg.seq_group * head_dim


def outlier_count(cfg: QuantConfig, head_dim: int) -> int:
    """Outliers per token group: ``ceil(outliers * elements)`` (0 without outliers)."""
    return math.ceil(round(cfg.outliers * token_group_elements(cfg, head_dim), 9))


def outlier_bits(cfg: QuantConfig, head_dim: int) -> float:
    """Bits per element the outliers cost: ``count * 32 / elements`` of a token group."""
    return outlier_count(cfg, head_dim) * OUTLIER_BITS / token_group_elements(cfg, head_dim)


def outlier_mask(x: torch.Tensor, cfg: QuantConfig) -> torch.Tensor:
    """bool [..., n, d]: the ``outlier_count`` largest ``|x|`` of each token group of x [..., n, d]
    (n a multiple of the token group's tokens)."""
    *lead, n, d = x.shape
    rows = x.abs().reshape(*lead, n // cfg.seq_group, cfg.seq_group * d)
    top = rows.topk(outlier_count(cfg, d), dim=-1).indices
    return torch.zeros_like(rows, dtype=torch.bool).scatter_(-1, top, True).reshape(x.shape)


def read_with_outliers(x: torch.Tensor, cfg: QuantConfig,
                       read: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """x float32 [..., n, d] as read back with ``cfg.outliers``: ``read`` (the dense quantizer,
    [..., n, d] -> float32 [..., n, d]) of x with its outliers neutralised, the outliers in fp16."""
    if x.numel() and x.abs().max() > FP16_MAX:
        raise ValueError("x: values exceed the fp16 range of the outliers")
    mask = outlier_mask(x, cfg)
    xg, mg = grouped(x, cfg), grouped(mask, cfg)
    lo = torch.where(mg, math.inf, xg).amin(-2, keepdim=True)
    hi = torch.where(mg, -math.inf, xg).amax(-2, keepdim=True)
    neutral = torch.where(lo <= hi, torch.zeros_like(lo).clamp(lo, hi), torch.zeros_like(lo))
    filled = ungrouped(torch.where(mg, neutral, xg), cfg, *x.shape[-2:])
    return torch.where(mask, x.half().float(), read(filled))
