"""Non-uniform codebooks (KVQuant's "nuq"): ``2^bits`` levels in [0, 1] learned at calibration.

A group of the ``int`` format (``method.groups``) is mapped to [0, 1] by its own minimum and range,
as the uniform asymmetric quantizer maps it: ``u = (x - lo) / (hi - lo)``. The uniform quantizer
rounds ``u`` to the levels ``i / (2^bits - 1)``; ``codebook="nuq"`` takes the nearest level of a
codebook learned per layer and side (keys, values) instead, and reads ``lo + level * (hi - lo)``
with ``lo`` and ``hi - lo`` in fp16 (one scale and zero-point per group, as uniform codes).

Learning (:func:`learn_codebook`): 1-D k-means (Lloyd) on a seeded subsample of the calibration's
normalised values, started at the uniform levels, :data:`ITERATIONS` iterations, the two endpoints
pinned to 0 and 1 so every group's minimum and maximum stay exact. Each value is weighted by its
group's squared range ``(hi - lo)²``: a normalised error ``e`` costs ``(hi - lo)² e²`` in the cache, so
the weighted k-means minimises the calibration's own squared read-back error (unweighted, the
narrow groups would set the levels while the wide ones, with their outlier channels, dominate it).
The calibration does not know a run's group size: it normalises with the KIVI layout,
:data:`CALIBRATION_GROUP` = 32 (keys per_channel, 32 tokens a group, or the window if shorter;
values per_token, 32 channels a group, or head_dim if 32 does not divide it); a run with another
group size reads the same codebook.
"""

from __future__ import annotations

import torch

from headq_core.config import QuantConfig
from headq_core.method.formats import FP16_MAX
from headq_core.method.groups import grouped, ungrouped

CALIBRATION_GROUP = 32  # tokens (keys) / channels (values) of a calibration group: KIVI's layout
ITERATIONS = 40  # Lloyd iterations
SAMPLES = 1 << 16  # normalised values a (layer, side) keeps for learning


def uniform_levels(bits: int) -> torch.Tensor:
    """The uniform quantizer's levels ``i / (2^bits - 1)``: float32 [2^bits]."""
    count = 1 << bits
    return torch.arange(count, dtype=torch.float64).div(count - 1).float()


def calibration_config(side: str, seq: int, head_dim: int) -> QuantConfig:
    """The groups a calibration normalises ``side`` with: keys per_channel with ``min(32, seq)``
    tokens, values per_token with 32 channels (head_dim where 32 does not divide it)."""
    if side == "key":
        return QuantConfig(axis="per_channel", group_size=max(1, min(CALIBRATION_GROUP, seq)))
    group = CALIBRATION_GROUP if head_dim % CALIBRATION_GROUP == 0 else head_dim
    return QuantConfig(axis="per_token", group_size=group)


def normalised(x: torch.Tensor, cfg: QuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., n, d] (n a multiple of ``cfg.seq_group``) mapped to [0, 1] by each group's float32
    min and max, and each value's weight ``(hi - lo)²``: float32 [m] each, the groups with ``hi > lo``
    only, flattened."""
    xg = grouped(x.float(), cfg)
    lo, hi = xg.amin(-2, keepdim=True), xg.amax(-2, keepdim=True)
    span = (hi - lo).expand_as(xg)
    u = (xg - lo) / torch.where(span > 0, span, torch.ones_like(span))
    keep = span > 0
    return u[keep], span[keep].square()


def sample_normalised(x: torch.Tensor, side: str, count: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``count`` normalised values and their weights (float32 [m] each on the CPU,
    :func:`normalised`) of one layer's ``side`` x [b, h, L, d] (any device), drawn without
    replacement with ``generator`` (a CPU one); trailing tokens of an incomplete key group dropped."""
    seq, d = x.shape[-2:]
    cfg = calibration_config(side, seq, d)
    n = seq - seq % cfg.seq_group
    u, w = normalised(x[..., :n, :], cfg)
    if u.numel() > count:
        pick = torch.randperm(u.numel(), generator=generator)[:count].to(u.device)
        u, w = u[pick], w[pick]
    return u.cpu(), w.cpu()


def nearest(u: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index int64 of the nearest level of ascending ``levels`` [K] for each of u (any shape; ties
    to the lower level)."""
    mids = (levels[1:] + levels[:-1]) / 2
    return torch.bucketize(u.contiguous(), mids.to(u.dtype))


def learn_codebook(u: torch.Tensor, bits: int, weights: torch.Tensor | None = None,
                   iterations: int = ITERATIONS) -> torch.Tensor:
    """Lloyd's 1-D k-means of normalised values u [m] in [0, 1], each of ``weights`` [m] (default 1):
    float32 [2^bits], ascending, ``[0] = 0`` and ``[-1] = 1``; starts at :func:`uniform_levels`, a
    cluster of no weight keeps its level."""
    levels = uniform_levels(bits).double()
    u = u.double().flatten()
    w = torch.ones_like(u) if weights is None else weights.double().flatten()
    if not u.numel():
        return levels.float()
    count = levels.numel()
    for _ in range(iterations):
        idx = nearest(u, levels)
        sums = torch.zeros(count, dtype=torch.float64).index_add_(0, idx, u * w)
        sizes = torch.zeros(count, dtype=torch.float64).index_add_(0, idx, w)
        means = torch.where(sizes > 0, sums / torch.where(sizes > 0, sizes, 1.0), levels)
        levels = torch.cat([levels[:1], means[1:-1], levels[-1:]]).sort().values
    return levels.float()


def read_nuq(rows: torch.Tensor, cfg: QuantConfig, levels: torch.Tensor) -> torch.Tensor:
    """rows float32 [..., n, d] (n a multiple of ``cfg.seq_group``) as read back with ``levels``
    float32 [2^bits] (ascending, in [0, 1]): per group fp16 ``zero = lo`` and ``scale = hi - lo``
    (1 where it rounds to 0), ``zero + levels[nearest((x - zero) / scale)] * scale`` in float32."""
    if levels.shape != (1 << cfg.bits,):
        raise ValueError(f"codebook: {1 << cfg.bits} levels for {cfg.bits}-bit codes, "
                         f"got {tuple(levels.shape)}")
    n, d = rows.shape[-2:]
    if not rows.numel():
        return rows.float()
    xg = grouped(rows.float(), cfg)
    lo, hi = xg.amin(-2, keepdim=True), xg.amax(-2, keepdim=True)
    if lo.abs().max() > FP16_MAX or hi.abs().max() > FP16_MAX or (hi - lo).max() > FP16_MAX:
        raise ValueError("x: values exceed the fp16 range of the scale / zero-point")
    zero = lo.half().float()
    scale = (hi - lo).half().float()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    levels = levels.float().to(rows.device)
    read = zero + levels[nearest((xg - zero) / scale, levels)] * scale
    return ungrouped(read, cfg, n, d)


def check_levels(levels: torch.Tensor, bits: int, what: str = "codebook") -> None:
    """Refuse a codebook that is not float [2^bits], ascending, in [0, 1], finite."""
    ok = (levels.shape == (1 << bits,) and levels.is_floating_point() and bool(torch.isfinite(levels).all())
          and bool((levels >= 0).all() and (levels <= 1).all()) and bool((levels.diff() >= 0).all()))
    if not ok:
        raise ValueError(f"{what}: must be {1 << bits} ascending levels in [0, 1]")
