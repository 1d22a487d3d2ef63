"""A throw-away PostgreSQL database for a test session; the tests skip when the server is absent."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from testkit.postgres import Unreachable
from testkit.postgres import temporary_database as _database


@contextlib.contextmanager
def temporary_database(prefix: str) -> Iterator[str]:
    """``testkit.postgres.temporary_database``, skipping the tests when PostgreSQL is unreachable."""
    try:
        manager = _database(prefix)
        url = manager.__enter__()
    except Unreachable as exc:
        pytest.skip(str(exc))
    try:
        yield url
    finally:
        manager.__exit__(None, None, None)
