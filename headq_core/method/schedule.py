"""The decode rule: which cached tokens a query reads in quantized form (METHOD.md, "decode mode").

After ``n`` tokens are cached, key ``j`` is in quantized form iff it lies in a complete group of
``seq_group`` tokens (``group_size`` for ``per_channel``, 1 for ``per_token``) older than the
``residual`` most recent tokens. Query ``t`` (absolute position ``offset + t``) reads a cache of
``offset + t + 1`` tokens. One definition for the teacher-forced evaluator and the real cache.
"""

from __future__ import annotations

import torch

from headq_core.config import QuantConfig


def quantized_count(n_tokens: int, cfg: QuantConfig | None) -> int:
    """Number of leading tokens held in quantized form once ``n_tokens`` are cached (0 if dense)."""
    if n_tokens < 0:
        raise ValueError(f"n_tokens: must be >= 0, got {n_tokens}")
    if cfg is None:
        return 0
    eligible = max(0, n_tokens - cfg.residual)
    return eligible // cfg.seq_group * cfg.seq_group


def leave_step(positions: torch.Tensor, cfg: QuantConfig) -> torch.Tensor:
    """First decode step (absolute query position) at which each token in ``positions`` is quantized.

    positions: int64 [...] -> int64 [...]. Equals ``j + residual`` for ``per_token``.
    """
    g = cfg.seq_group
    group_end = (positions // g + 1) * g
    return group_end + cfg.residual - 1


def decode_mask(q_len: int, kv_len: int, cfg: QuantConfig | None, offset: int = 0) -> torch.Tensor:
    """bool [q_len, kv_len]: True where query ``t`` (absolute position ``offset + t``) reads key ``j``
    in quantized form. All False for ``cfg=None``. Needs ``offset + q_len <= kv_len``."""
    if q_len < 0 or kv_len < 0:
        raise ValueError(f"q_len/kv_len: must be >= 0, got {q_len}, {kv_len}")
    if offset < 0 or offset + q_len > kv_len:
        raise ValueError(f"offset: queries {offset}..{offset + q_len - 1} must lie inside kv_len={kv_len}")
    if cfg is None:
        return torch.zeros(q_len, kv_len, dtype=torch.bool)
    n_cached = torch.arange(q_len) + offset + 1
    count = (n_cached - cfg.residual).clamp(min=0) // cfg.seq_group * cfg.seq_group
    return torch.arange(kv_len).unsqueeze(0) < count.unsqueeze(1)
