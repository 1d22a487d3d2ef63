"""Effective bits per cached element of a configuration: the one budget figure shown everywhere.

Per element of a ``head_dim``-wide row (``formats.row_bits``): for the ``int`` format the packed
code width (``ceil(d*bits/8)*8/d``, exact for the usual head dims), plus 32 bits (fp16 scale + fp16
zero; symmetric: 16, the scale only) per group of ``group_size`` elements; for the engine formats
their own layout (fp8: 8, + 32/d with a float32 scale per token; llama.cpp blocks of 32: q8_0 8.5,
q4_0 4.5, q4_1 5.0, q5_0 5.5, q5_1 6.0, iq4_nl 4.5; static fp8 scales are per layer or head, so
nothing per element); a Hadamard rotation and pre-RoPE keys add nothing (the seed, the position fix
them); ``nuq`` codes (``codebook="nuq"``) cost what uniform ``int`` codes cost, their codebook being
one per layer and side (``2^bits`` fp32 levels per layer: negligible, not counted); ``int`` outliers
(KVQuant) add an fp16 value and a 16-bit index each, ``ceil(f * n) * 32 / n``
for ``n`` elements per token group (``G*d`` per_channel, ``d`` per_token; about ``f * 32``,
``method.outliers``); plus for
HeadQ the side code: ``rank*side_bits/d`` (padded to whole bytes per token) and, when
``side_bits < 16``, either a 16-bit scale per token (``side_scale="token"``: ``+ 16/d``) or an fp16
step and minimum per code component and key group of G tokens (``"group"``: ``+ 2*16*rank/(G*d)``).
With an A² value policy a ``fraction`` of tokens is stored at
``high_bits`` (same group layout; 16 means a plain fp16 row) and the rest at the quantizer's bits.
With ``seq_len`` the full-precision residual window and incomplete group (16 bits) are counted
too; without it the long-context limit is reported.
"""

from __future__ import annotations

from headq_core.config import HeadQConfig, QuantConfig, ValuePolicyConfig
from headq_core.method.formats import FP16_BITS, row_bits
from headq_core.method.packing import packed_size
from headq_core.method.schedule import quantized_count


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
    bits = row_bits(cfg, head_dim)  # int: G tokens of one channel, or G channels of one token
    if policy is not None:
        if cfg.format != "int":
            raise ValueError(f"value_policy: needs an 'int' value format, got {cfg.format!r}")
        share = policy.fraction_for(cfg.bits) if fraction is None else fraction
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"fraction: must lie in [0, 1], got {share!r}")
        bits = share * row_bits(cfg, head_dim, policy.high_bits) + (1.0 - share) * bits
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
