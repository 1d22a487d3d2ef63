"""The dashboard's API door: URL checks, readable errors when the API is unreachable, the cache."""

from __future__ import annotations

import pytest

from app.dashboard.api import ApiClient, ApiError, ResultsCache
from testkit.live_server import free_port


def test_base_url_is_checked():
    with pytest.raises(ValueError, match="api_base_url"):
        ApiClient("localhost:8000")


def test_unreachable_api_is_a_readable_error():
    client = ApiClient(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(ApiError, match="cannot be reached") as info:
        client.jobs()
    assert info.value.status is None
    with pytest.raises(ApiError, match="cannot be reached"):
        client.cancel("some-job")


def test_results_cache_is_a_small_lru():
    cache = ResultsCache(size=2)
    cache.put(("u", "a"), {"n": 1})
    cache.put(("u", "b"), {"n": 2})
    assert cache.get(("u", "a")) == {"n": 1}  # a is now the most recent
    cache.put(("u", "c"), {"n": 3})
    assert cache.get(("u", "b")) is None and cache.get(("u", "a")) == {"n": 1}
