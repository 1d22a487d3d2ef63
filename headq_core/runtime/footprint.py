"""Cache sizes by formula, for memory figures that compare with the model's own cache.

A model's own cache (transformers' ``DynamicCache(config=...)``) keeps every token of a full-attention
layer but only the last ``window - 1`` of a sliding layer, so "× smaller than bf16" must divide by
:func:`model_cache_bytes`, never by a full-length cache of every layer. :func:`quantized_cache_bytes`
is what a ``HeadQCache`` holds by the budget formula (``method.budget.effective_bits``): a full layer
as the effective bits of ``seq_len`` tokens say, a sliding layer its bounded window, whose newest
``residual`` tokens stay in full precision (16 bits) and the rest quantized.
"""

from __future__ import annotations

from collections.abc import Sequence

from headq_core.config import HeadQConfig, QuantConfig
from headq_core.method.budget import FP16_BITS, effective_bits


def held_tokens(seq_len: int, window: int | None) -> int:
    """Tokens the model's own cache keeps on a layer after ``seq_len`` tokens."""
    return seq_len if window is None else min(seq_len, window - 1)


def model_cache_bytes(windows: Sequence[int | None], seq_len: int, *, batch: int, kv_heads: int,
                      head_dim: int, dtype_bytes: int = 2) -> int:
    """Bytes of the model's own dense cache (keys and values, ``dtype_bytes`` per element, 2 for bf16)."""
    return sum(2 * batch * kv_heads * held_tokens(seq_len, w) * head_dim * dtype_bytes for w in windows)


def _side_bits(cfg: QuantConfig | None, head_dim: int, headq: HeadQConfig | None, tokens: int,
               window: int | None) -> float:
    """Stored bits of one side of one layer (all its held tokens, per element of a row)."""
    if cfg is None or tokens == 0:
        return FP16_BITS * tokens
    if window is None:
        return effective_bits(cfg, head_dim, headq, seq_len=tokens) * tokens
    dense = min(cfg.residual, tokens)
    return effective_bits(cfg, head_dim, headq) * (tokens - dense) + FP16_BITS * dense


def quantized_cache_bytes(windows: Sequence[int | None], seq_len: int, key: QuantConfig | None,
                          value: QuantConfig | None, headq: HeadQConfig | None = None, *, batch: int,
                          kv_heads: int, head_dim: int, sliding_layers: str = "quantize") -> float:
    """Bytes a quantized cache holds by formula after ``seq_len`` tokens (``sliding_layers=
    "full_precision"``: sliding layers at 16 bits)."""
    bits = 0.0
    for w in windows:
        tokens = held_tokens(seq_len, w)
        dense = w is not None and sliding_layers == "full_precision"
        bits += _side_bits(None if dense else key, head_dim, None if dense else headq, tokens, w)
        bits += _side_bits(None if dense else value, head_dim, None, tokens, w)
    return bits * batch * kv_heads * head_dim / 8
