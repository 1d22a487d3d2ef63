"""Uncertainty of the run aggregates over the windows they were measured on.

Every run of an evaluation reads the same windows, so the runs are *paired*: a window whose text is
hard raises dense and quantized NLL alike. The aggregates (perplexity, excess over dense, share of
the base run's excess removed) are recomputed on ``replicates`` seeded bootstrap resamples of the
windows, the same resample for every run, so the shared text difficulty cancels in the
differences. Standard error: the replicates' standard deviation; interval: their 2.5 and 97.5
percentiles (docs/method.md gives the rule and how many windows a width needs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

REPLICATES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Spread:
    """A statistic's bootstrap standard error and ``CONFIDENCE`` interval (None where undefined)."""

    se: float | None
    ci: tuple[float, float] | None

    def fields(self, name: str) -> dict[str, float | list[float] | None]:
        return {f"{name}_se": self.se, f"{name}_ci": None if self.ci is None else list(self.ci)}


def resample_indices(n_windows: int, seed: int, replicates: int = REPLICATES) -> torch.Tensor:
    """int64 [replicates, n_windows]: window indices drawn with replacement (seeded, CPU)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_windows, (replicates, n_windows), generator=gen)


def spread(replicated: torch.Tensor) -> Spread:
    """:class:`Spread` of a statistic's values on the replicates [replicates] (NaN entries, e.g. a
    ratio whose denominator vanished in a resample, are dropped; None when too few remain)."""
    values = replicated[torch.isfinite(replicated)].double()
    if values.numel() < max(10, replicated.numel() // 2):
        return Spread(None, None)
    tail = (1 - CONFIDENCE) / 2
    lo, hi = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return Spread(float(values.std()), (float(lo), float(hi)))


Statistic = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def bootstrap(per_window: dict[str, torch.Tensor], statistic: Statistic, indices: torch.Tensor) -> Spread:
    """Spread of ``statistic`` over the paired resamples ``indices`` [replicates, n_windows]:
    ``per_window`` holds each run's mean NLL per token of every window [n_windows]; the statistic
    maps each run's mean NLL (any shape, here [replicates]) to its value."""
    means = {name: m.double()[indices].mean(dim=1) for name, m in per_window.items()}
    return spread(statistic(means))


def uncertainty_note(seed: int) -> dict[str, object]:
    """How the document's standard errors and intervals were computed."""
    return {"method": "paired bootstrap over windows (percentile interval)", "replicates": REPLICATES,
            "confidence": CONFIDENCE, "seed": seed}
