"""Seeded bootstrap intervals the dashboard computes itself (numpy only; the evaluator's own
intervals come with the results document).

``paired_difference``: perplexity A − B of two runs scored on the same windows, resampling window
indices (the same for both runs, so the text's difficulty cancels). ``spearman_interval``: Spearman
rho over heads, resampling heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
PAIRED_REPLICATES = 2000
SPEARMAN_REPLICATES = 1000


@dataclass(frozen=True)
class Estimate:
    """A point value with its bootstrap standard error and ``CONFIDENCE`` interval ``(lo, hi)``."""

    value: float
    se: float
    ci: tuple[float, float]

    @property
    def contains_zero(self) -> bool:
        return self.ci[0] <= 0.0 <= self.ci[1]


def _interval(values: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return float(lo), float(hi)


def paired_difference(
    nll_a: np.ndarray, nll_b: np.ndarray, replicates: int = PAIRED_REPLICATES, seed: int = 0
) -> Estimate:
    """``exp(mean nll_a) - exp(mean nll_b)`` with a paired bootstrap over windows.

    ``nll_a``, ``nll_b``: mean NLL per token of each window [n_windows], the same windows in the same
    order. Each replicate draws ``n_windows`` indices with replacement (``default_rng(seed)``).
    """
    a, b = np.asarray(nll_a, dtype=float), np.asarray(nll_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"windows: need two equal non-empty [n_windows] arrays, got {a.shape}, {b.shape}")
    idx = np.random.default_rng(seed).integers(0, a.size, (replicates, a.size))
    diffs = np.exp(a[idx].mean(axis=1)) - np.exp(b[idx].mean(axis=1))
    return Estimate(float(np.exp(a.mean()) - np.exp(b.mean())), float(diffs.std(ddof=1)), _interval(diffs))


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair of ``x``, ``y`` [replicates, n] (NaN for a constant row)."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=1) / np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))


def spearman_interval(
    x: np.ndarray, y: np.ndarray, replicates: int = SPEARMAN_REPLICATES, seed: int = 0, chunk: int = 100
) -> tuple[float, float] | None:
    """``CONFIDENCE`` interval of Spearman rho of ``x``, ``y`` [n] over heads resampled with
    replacement (indices [replicates, n] from ``default_rng(seed)``, ranked ``chunk`` replicates at
    a time); None below 3 points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3:
        return None
    idx = np.random.default_rng(seed).integers(0, len(x), (replicates, len(x)))
    rhos = np.concatenate([_spearman_rows(x[i], y[i]) for i in np.array_split(idx, -(-replicates // chunk))])
    rhos = rhos[np.isfinite(rhos)]
    return _interval(rhos) if rhos.size else None
