"""Positions inside a window: the query rows sampled for per-head metrics at long context, and the
log-spaced position buckets of the excess NLL against token position."""

from __future__ import annotations

import math
from typing import Any

import torch

BUCKETS = 64
LAST_ROWS = 16  # the sample always holds the last rows (the longest contexts of the window)


def sample_rows(window: int, count: int, seed: int = 0) -> torch.Tensor | None:
    """int64 [R] ascending query positions of a window of ``window`` tokens: the last
    ``min(LAST_ROWS, count // 4)`` rows and one seeded random row in each of ``count - last`` equal
    strata of the others (spread over the whole window). None when ``count`` covers the window."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"head_rows: must be a positive integer, got {count!r}")
    if count >= window:
        return None
    last = max(1, min(LAST_ROWS, count // 4))
    spread, rest = count - last, window - last
    gen = torch.Generator().manual_seed(seed)
    edges = torch.arange(spread + 1, dtype=torch.float64) * rest / spread
    lo, hi = edges[:-1].ceil().long(), edges[1:].ceil().long()  # strata [lo, hi), non-empty as rest >= spread
    picks = lo + (torch.rand(spread, generator=gen, dtype=torch.float64) * (hi - lo)).long()
    return torch.cat([picks, torch.arange(rest, window)])


def bucket_edges(first: int, window: int, buckets: int = BUCKETS) -> list[int]:
    """Ascending edges of at most ``buckets`` log-spaced position buckets covering the scored
    positions ``first..window-1`` (bucket i holds positions edges[i]..edges[i+1]-1)."""
    if not 1 <= first < window:
        raise ValueError(f"window: no scored positions between {first} and {window}")
    raw = [first * (window / first) ** (i / buckets) for i in range(buckets + 1)]
    edges = sorted({first, window, *(min(window, max(first, math.ceil(x))) for x in raw)})
    return edges


def position_buckets(position_nll: dict[str, torch.Tensor], first: int, window: int, windows: int,
                     dense: str | None) -> dict[str, Any]:
    """The results document's ``position_nll`` block from NLL sums over windows per scored position
    float64 [window - first] per run: bucket ``edges``, scored ``tokens`` per bucket, mean ``nll``
    per bucket per run and, with a dense run, the ``excess_nll`` of every run over it."""
    edges = bucket_edges(first, window)
    index = torch.tensor(edges) - first
    counts = (index[1:] - index[:-1]).to(torch.float64) * windows

    def means(sums: torch.Tensor) -> torch.Tensor:
        cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), sums.double().cpu().cumsum(0)])
        return (cumulative[index[1:]] - cumulative[index[:-1]]) / counts

    nll = {name: means(sums) for name, sums in position_nll.items()}
    block: dict[str, Any] = {
        "edges": edges, "tokens": [int(c) for c in counts],
        "nll": {name: [float(v) for v in m] for name, m in nll.items()}, "baseline": dense}
    if dense is not None:
        block["excess_nll"] = {name: [float(v) for v in m - nll[dense]] for name, m in nll.items()}
    return block
