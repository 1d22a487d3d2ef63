"""Does the score-space error rank heads by attention KL? Spearman's rho of per-head ``attn_kl``
with ``fisher`` and with ``key_mse`` (METHOD.md's first claim), with a paired bootstrap over windows.

Each run's per-head metrics are ratios of sums over windows (``HeadMetrics.state``). A replicate
draws the windows with replacement (the same draw for every run, as for the perplexities), sums
their states, recomputes every head's metrics and ranks the heads again: the interval says how much
rho would move on other text of the same kind, which resampling the heads cannot say. Heads are
those whose three metrics are finite and positive on all windows (as the dashboard plots them).
"""

from __future__ import annotations

from typing import Any

import torch

from headq_core.evaluation.metrics import metrics_from_state
from headq_core.evaluation.uncertainty import spread

TARGET = "attn_kl"
PREDICTORS = ("fisher", "key_mse")
POOLED = "all runs"  # the key of the rho over the heads of every run together
CHUNK = 250  # replicates recomputed at a time (bounds memory on large models)


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks along the last dim, ties given their average rank: float64 [..., n]."""
    ordered = x.sort(dim=-1).values.contiguous()
    below = torch.searchsorted(ordered, x.contiguous(), right=False)
    through = torch.searchsorted(ordered, x.contiguous(), right=True)
    return (below + through + 1).double() / 2


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman's rho of ``x`` and ``y`` [..., n] along the last dim: [...] (NaN if one is constant)."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(-1, keepdim=True), ry - ry.mean(-1, keepdim=True)
    return (rx * ry).sum(-1) / ((rx * rx).sum(-1) * (ry * ry).sum(-1)).sqrt()


def _per_head(states: dict[str, torch.Tensor], weights: torch.Tensor, heads: int) -> dict[str, torch.Tensor]:
    """Metrics [R, layers * Hq] of the window sums weighted by ``weights`` [R, batches]."""
    summed = {k: torch.tensordot(weights, v, dims=([1], [0])) for k, v in states.items()}
    metrics = metrics_from_state(summed, heads)
    return {m: metrics[m].flatten(1) for m in (TARGET, *PREDICTORS)}


def head_rank_correlations(states: dict[str, dict[str, torch.Tensor]], heads: int,
                           indices: torch.Tensor) -> dict[str, dict[str, dict[str, Any]]]:
    """rho with its bootstrap ``se`` and ``ci`` per run and for all runs pooled.

    ``states``: run -> ``HeadAccumulator.stacked_states()`` (name -> [batches, layers, ...]), runs
    with per-head metrics only; ``indices`` [replicates, batches]: the resampled batches. Returns
    ``{run | POOLED: {predictor: {"rho", "se", "ci", "heads"}}}`` (POOLED with two runs or more);
    rho is None below 3 heads or for a constant metric, the interval None below 2 batches."""
    runs = [name for name, st in states.items() if st and TARGET in metrics_from_state(st, heads)]
    if not runs:
        return {}
    batches = next(iter(states[runs[0]].values())).shape[0]
    point = {r: _per_head(states[r], torch.ones(1, batches, dtype=torch.float64), heads) for r in runs}
    keep = {r: torch.stack([(v[0] > 0) & v[0].isfinite() for v in point[r].values()]).all(0) for r in runs}
    replicated: dict[str, dict[str, list[torch.Tensor]]] = {
        r: {m: [] for m in (TARGET, *PREDICTORS)} for r in runs}
    for start in range(0, indices.shape[0], CHUNK):
        chunk = indices[start:start + CHUNK]
        weights = torch.zeros(chunk.shape[0], batches, dtype=torch.float64).scatter_add_(
            1, chunk, torch.ones_like(chunk, dtype=torch.float64))
        for r in runs:
            for m, v in _per_head(states[r], weights, heads).items():
                replicated[r][m].append(v[:, keep[r]])
    groups = {r: [r] for r in runs} | ({POOLED: runs} if len(runs) > 1 else {})
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for group, members in groups.items():
        y0 = torch.cat([point[r][TARGET][0, keep[r]] for r in members])
        y = torch.cat([torch.cat(replicated[r][TARGET]) for r in members], dim=1)
        out[group] = {}
        for m in PREDICTORS:
            x0 = torch.cat([point[r][m][0, keep[r]] for r in members])
            x = torch.cat([torch.cat(replicated[r][m]) for r in members], dim=1)
            rho = float(spearman(x0, y0)) if y0.numel() >= 3 else None
            rho = None if rho is None or rho != rho else rho  # NaN: a constant metric
            interval = spread(spearman(x, y)) if rho is not None and batches > 1 else None
            out[group][m] = {"rho": rho, "se": interval and interval.se,
                             "ci": None if interval is None or interval.ci is None else list(interval.ci),
                             "heads": int(y0.numel())}
    return out
