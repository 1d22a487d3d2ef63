"""A daemon thread that tells the store a job is alive and notices cancellation requests."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)


class Heartbeat:
    """Call ``beat()`` now and then every ``interval`` seconds until the block ends.

    ``beat`` records the heartbeat and returns True once cancellation was requested; from then on
    :meth:`should_stop` is True (the core polls it between windows). A failing beat is logged and
    retried: a database blip must not kill a running job, and a job that cannot beat for long is
    declared stale by the reconciler anyway.
    """

    def __init__(self, beat: Callable[[], bool], interval: float) -> None:
        self._beat, self._interval = beat, interval
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="headq-heartbeat", daemon=True)

    def should_stop(self) -> bool:
        """True once the store reported ``cancel_requested`` for this job."""
        return self._cancel.is_set()

    def __enter__(self) -> Heartbeat:
        self._pulse()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join(timeout=self._interval + 5)

    def _pulse(self) -> None:
        try:
            if self._beat():
                self._cancel.set()
        except Exception:  # noqa: BLE001 - keep beating; staleness is the reconciler's call
            log.exception("heartbeat failed")

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            self._pulse()
