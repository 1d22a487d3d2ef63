"""A results document's head rows or run rows as a table: CSV text or Parquet bytes (pandas +
pyarrow). Run rows carry each aggregate with its standard error and 95% interval."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from headq_jobs.store import HEAD_METRICS

COLUMNS = ("run", "layer", "head", "kv_head", *HEAD_METRICS)
AGGREGATES = ("perplexity", "excess_perplexity", "excess_removed")
RUN_COLUMNS = ("run", "key_bits", "value_bits", "tokens", "nll",
               *(f"{a}{suffix}" for a in AGGREGATES for suffix in ("", "_se", "_ci_low", "_ci_high")))


def head_frame(heads: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per head row; the fixed columns first (also when there are no rows), extras after."""
    frame = pd.DataFrame.from_records(heads) if heads else pd.DataFrame()
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series(dtype="float64" if column in HEAD_METRICS else "object")
    extras = [c for c in frame.columns if c not in COLUMNS]
    return frame[[*COLUMNS, *extras]]


def run_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: bits, tokens, NLL and each aggregate with ``_se``, ``_ci_low``, ``_ci_high``
    (empty where the document has none, e.g. an import from before uncertainties existed)."""
    records = []
    for row in runs:
        bits = row.get("effective_bits") or {}
        record = {"run": row.get("name"), "key_bits": bits.get("key"), "value_bits": bits.get("value"),
                  "tokens": row.get("tokens"), "nll": row.get("nll")}
        for name in AGGREGATES:
            ci = row.get(f"{name}_ci") or [None, None]
            record |= {name: row.get(name), f"{name}_se": row.get(f"{name}_se"),
                       f"{name}_ci_low": ci[0], f"{name}_ci_high": ci[1]}
        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=list(RUN_COLUMNS))
    numeric = [c for c in RUN_COLUMNS if c != "run"]
    frame[numeric] = frame[numeric].astype("float64")
    return frame


def frame_of(document: dict[str, Any], table: str) -> pd.DataFrame:
    """``table`` ("heads" or "runs") of ``document``."""
    if table == "runs":
        return run_frame(document.get("runs") or [])
    return head_frame(document.get("heads") or [])


def to_csv(frame: pd.DataFrame) -> str:
    """A table as CSV with a header line."""
    return frame.to_csv(index=False)


def to_parquet(frame: pd.DataFrame) -> bytes:
    """A table as a Parquet file."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()
