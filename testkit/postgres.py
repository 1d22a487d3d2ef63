"""A throw-away PostgreSQL database on the local server (trust auth), for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("HEADQ_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


class Unreachable(RuntimeError):
    """The PostgreSQL server at ``PG_URL`` did not create the database."""


@contextlib.contextmanager
def temporary_database(prefix: str) -> Iterator[str]:
    """Create a uniquely named database, yield its URL, drop it afterwards (``Unreachable`` when
    the server cannot create it)."""
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure means: no server to use
        admin.dispose()
        raise Unreachable(f"PostgreSQL not reachable at {PG_URL}: {exc}") from exc
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
