"""Rank statistics for the report: average ranks and Spearman's rho."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks of ``x`` (``[n]``), ties sharing their mean rank."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty(len(x))
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (Pearson of average ranks) of ``x``, ``y`` (``[n]`` each) over pairs
    where both are finite; None with fewer than 3 pairs or a constant side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"y: length {y.shape} differs from x {x.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return None
    rx, ry = average_ranks(x[ok]), average_ranks(y[ok])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return None if denom == 0 else float((rx * ry).sum() / denom)
