"""How many windows an interval width needs: the one formula the core, the studies and the
dashboard share (pure Python)."""

from __future__ import annotations

import math

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


def windows_for_half_width(se: float, n_windows: int, half_width: float) -> int:
    """Windows needed for a 95% interval of +/- ``half_width``, from a standard error ``se``
    measured on ``n_windows`` (the error shrinks as 1/sqrt(windows))."""
    if se <= 0 or half_width <= 0 or n_windows < 1:
        raise ValueError("se, half_width and n_windows must be positive")
    return max(1, math.ceil(n_windows * (Z_95 * se / half_width) ** 2))
