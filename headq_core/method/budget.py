"""Effective bits per cached element of a configuration: the one budget figure shown everywhere.

Per element of a ``head_dim``-wide row: the packed code width (``ceil(d*bits/8)*8/d``, exact for
the usual head dims), plus 32 bits (fp16 scale + fp16 zero) per group of ``group_size`` elements,
plus for HeadQ the side code: ``rank*side_bits/d`` (padded to whole bytes per token) and, when
``side_bits < 16``, either a 16-bit scale per token (``side_scale="token"``: ``+ 16/d``) or an fp16
step and minimum per code component and key group of G tokens (``"group"``: ``+ 2*16*rank/(G*d)``).
With an A² value policy a ``fraction`` of tokens is stored at
``high_bits`` (same group layout; 16 means a plain fp16 row) and the rest at the quantizer's bits.
With ``seq_len`` the full-precision residual window and incomplete group (16 bits) are counted
too; without it the long-context limit is reported.
"""

from __future__ import annotations

from headq_core.config import HeadQConfig, QuantConfig, ValuePolicyConfig
from headq_core.method.packing import packed_size
from headq_core.method.schedule import quantized_count

FP16_BITS = 16.0


def _row_bits(bits: int, head_dim: int, group_size: int) -> float:
    """Bits per element of one quantized row (codes + fp16 scale and zero per group)."""
    if bits == 16:
        return FP16_BITS
    return packed_size(head_dim, bits) * 8 / head_dim + 2 * FP16_BITS / group_size


def side_code_bits(headq: HeadQConfig, head_dim: int, group_size: int | None = None) -> float:
    """Bits per key element spent on the HeadQ side code: codes plus a per-token scale, or (group
    scales) a step and minimum per component shared by the ``group_size`` tokens of a key group."""
    if headq.side_bits == 16:
        return headq.rank * FP16_BITS / head_dim
    codes = packed_size(headq.rank, headq.side_bits) * 8 / head_dim
    if headq.side_scale == "token":
        return codes + FP16_BITS / head_dim
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: group side scales need the key group size, got {group_size!r}")
    return codes + 2 * FP16_BITS * headq.rank / (group_size * head_dim)


def effective_bits(cfg: QuantConfig | None, head_dim: int, headq: HeadQConfig | None = None,
                   policy: ValuePolicyConfig | None = None, *, fraction: float | None = None,
                   seq_len: int | None = None) -> float:
    """Average stored bits per element (16.0 for a dense ``cfg=None``).

    ``fraction`` overrides the policy's nominal keep fraction with the realised one.
    """
    if not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"head_dim: must be a positive integer, got {head_dim!r}")
    if cfg is None:
        if headq is not None or policy is not None:
            raise ValueError("cfg: HeadQ and a value policy need a quantizer")
        return FP16_BITS
    if cfg.axis == "per_token" and head_dim % cfg.group_size:
        raise ValueError(f"group_size: {cfg.group_size} must divide head_dim {head_dim} for per_token")
    group = cfg.group_size  # G tokens of one channel, or G channels of one token: G elements
    bits = _row_bits(cfg.bits, head_dim, group)
    if policy is not None:
        share = policy.fraction_for(cfg.bits) if fraction is None else fraction
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"fraction: must lie in [0, 1], got {share!r}")
        bits = share * _row_bits(policy.high_bits, head_dim, group) + (1.0 - share) * bits
    elif fraction is not None:
        raise ValueError("fraction: only meaningful with a value policy")
    if headq is not None:
        if headq.side_scale == "group" and cfg.axis != "per_channel":
            raise ValueError("headq.side_scale: 'group' needs per_channel keys")
        bits += side_code_bits(headq, head_dim, cfg.group_size)
    if seq_len is None:
        return bits
    if seq_len < 1:
        raise ValueError(f"seq_len: must be >= 1, got {seq_len}")
    n_q = quantized_count(seq_len, cfg)
    return (n_q * bits + (seq_len - n_q) * FP16_BITS) / seq_len
