"""The executor interface the API codes against, its error, and the background loop both use."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class ExecutorUnavailable(RuntimeError):
    """The executor cannot take jobs now (broker down): the API answers 503 with this message."""


class Executor(Protocol):
    """Hands job ids to workers; never sees a spec or a model."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def submit(self, job_id: str) -> None: ...

    def cancel(self, job_id: str) -> None: ...

    def ready(self) -> tuple[bool, str]: ...


class Loop:
    """Call ``tick()`` every ``interval`` seconds on a daemon thread until ``stop()``.

    A failing tick is logged and retried on the next round, so a database blip never kills the
    dispatcher.
    """

    def __init__(self, name: str, tick: Callable[[], None], interval: float) -> None:
        self._name, self._tick, self._interval = name, tick, interval
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopped.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next tick now instead of at the end of the interval."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._tick()
            except Exception:  # noqa: BLE001 - keep the loop alive, log the cause
                log.exception("%s: tick failed", self._name)
            self._wake.wait(self._interval)
            self._wake.clear()
