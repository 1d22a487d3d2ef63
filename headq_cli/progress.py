"""The progress line of ``headq calibrate`` / ``headq eval``: stage, window n/N and an ETA.

The core reports ``progress(fraction, stage)`` with ``fraction = steps done / steps``, where a step
is one window of one run (``batch`` windows per call); the first report after the model loaded
therefore tells the number of windows. The ETA extrapolates the time since that first report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


def eta_text(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) of a duration."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class WindowProgress:
    """Turns ``(fraction, stage)`` reports of a job with ``runs`` runs (1 for a calibration) and
    ``batch`` windows per step into ``stage  window n/N  ETA m:ss`` text."""

    def __init__(self, runs: int = 1, batch: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.runs, self.batch, self.clock = max(runs, 1), max(batch, 1), clock
        self.windows: int | None = None
        self.start: tuple[float, float] | None = None  # (time, fraction) of the first window's report

    def text(self, fraction: float, stage: str) -> str:
        """The line for this report."""
        if fraction <= 0:
            return stage
        now = self.clock()
        if self.start is None:
            self.start = (now, fraction)
            self.windows = max(1, round(self.batch / (fraction * self.runs)))
        assert self.windows is not None
        done = min(self.windows, math.ceil(fraction * self.windows - 1e-9))
        line = f"{stage}  window {done}/{self.windows}"
        began, first = self.start
        if fraction > first:
            line += f"  ETA {eta_text((now - began) * (1 - fraction) / (fraction - first))}"
        return line
