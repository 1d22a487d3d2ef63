"""The dashboard's only door to data: the REST API through :class:`app.client.HeadQClient`.

Every call goes over HTTP (also when the dashboard is mounted inside the API process). Failures
become :class:`ApiError` whose message is what a user should read: the API's own ``detail`` for
error answers, or a plain sentence when the API cannot be reached. Answers are plain dicts (JSON
shapes) for the page code. Results of finished jobs never change, so a few are cached.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from app.client import HeadQAPIError, HeadQClient

T = TypeVar("T")
TIMEOUT_S = 10.0


class ApiError(RuntimeError):
    """A failed API call; ``str(err)`` is the readable message, ``status`` the HTTP code or None."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ResultsCache:
    """Thread-safe LRU of results documents keyed by ``(base_url, job_id)``."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> dict | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: tuple[str, str], doc: dict) -> None:
        with self._lock:
            self._items[key] = doc
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_RESULTS = ResultsCache(size=4)  # a 32-layer document is ~100 MB of Python objects


class ApiClient:
    """The calls the pages make; ``base_url`` is the server root or its ``/api/v1`` URL.

    ``token`` goes with reads only. A write (:meth:`submit`, :meth:`cancel`) carries the token the
    user typed, so the dashboard never lends the server's own token to whoever can open the page.
    """

    def __init__(self, base_url: str, token: str | None = None) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"api_base_url: must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token

    def _call(self, fn: Callable[[HeadQClient], T], token: str | None = None) -> T:
        try:
            with HeadQClient(self.base_url, token=token, timeout=TIMEOUT_S) as api:
                return fn(api)
        except HeadQAPIError as exc:
            raise ApiError(str(exc), exc.status_code) from exc
        except httpx.HTTPError as exc:
            raise ApiError(f"The HeadQ Lab API at {self.base_url} cannot be reached ({exc}).") from exc

    def jobs(self, status: str | None = None, kind: str | None = None, limit: int = 200) -> list[dict]:
        """Jobs, newest first (``GET /jobs``), as JSON dicts."""
        page = self._call(lambda api: api.list(status=status, kind=kind, limit=limit), self.token)
        return [j.model_dump(mode="json") for j in page.items]

    def calibrations(self) -> list[dict]:
        """Succeeded calibration jobs (``GET /calibrations``)."""
        return [j.model_dump(mode="json") for j in self._call(lambda api: api.calibrations(), self.token)]

    def submit(self, spec: dict[str, Any], user_token: str | None = None) -> dict:
        """``POST /jobs`` with the user's own token (if any); the created Job."""
        return self._call(lambda api: api.submit(spec), user_token or None).model_dump(mode="json")

    def cancel(self, job_id: str, user_token: str | None = None) -> dict:
        """``POST /jobs/{id}/cancel`` (JSON content type) with the user's own token; the Job."""
        return self._call(lambda api: api.cancel(job_id), user_token or None).model_dump(mode="json")

    def results(self, job_id: str) -> dict:
        """The results document of a finished job (cached: it never changes once written)."""
        key = (self.base_url, job_id)
        doc = _RESULTS.get(key)
        if doc is None:
            doc = self._call(lambda api: api.results(job_id), self.token)
            _RESULTS.put(key, doc)
        return doc
