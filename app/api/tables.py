"""Head rows of a results document as a table: CSV text or Parquet bytes (pandas + pyarrow)."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from headq_jobs.store import HEAD_METRICS

COLUMNS = ("run", "layer", "head", "kv_head", *HEAD_METRICS)


def head_frame(heads: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per head row; the fixed columns first (also when there are no rows), extras after."""
    frame = pd.DataFrame.from_records(heads) if heads else pd.DataFrame()
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series(dtype="float64" if column in HEAD_METRICS else "object")
    extras = [c for c in frame.columns if c not in COLUMNS]
    return frame[[*COLUMNS, *extras]]


def to_csv(heads: list[dict[str, Any]]) -> str:
    """The head rows as CSV with a header line."""
    return head_frame(heads).to_csv(index=False)


def to_parquet(heads: list[dict[str, Any]]) -> bytes:
    """The head rows as a Parquet file."""
    buffer = io.BytesIO()
    head_frame(heads).to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()
