"""A results document's head rows or run rows as a table: CSV text or Parquet bytes (pandas +
pyarrow). Run rows carry each aggregate with its standard error and 95% interval. Any document the
store holds can be exported: an extra head column whose values are not all text, all booleans or all
numbers is written as JSON text, and a run value that is not a number is left empty. A metric that
does not apply is empty too: the value columns of a run whose spec has no value quantizer."""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd

from headq_jobs.store import HEAD_METRICS

COLUMNS = ("run", "layer", "head", "kv_head", *HEAD_METRICS)
VALUE_METRICS = ("value_mse", "value_a2", "readout_err")  # measure the value cache's error
AGGREGATES = ("perplexity", "excess_perplexity", "excess_removed")
RUN_COLUMNS = ("run", "key_bits", "value_bits", "tokens", "nll",
               *(f"{a}{suffix}" for a in AGGREGATES for suffix in ("", "_se", "_ci_low", "_ci_high")))
_INT64 = range(-(2**63), 2**63)


def _kind(value: Any) -> str:
    """What Parquet can hold ``value`` as: ``text``, ``bool``, ``number`` (int64 or float64) or ``json``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "text"
    if isinstance(value, float) or (isinstance(value, int) and value in _INT64):
        return "number"
    return "json"


def _plain_extras(heads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``heads`` with each extra column of lists, objects, huge integers or mixed kinds as JSON text."""
    kinds: dict[str, set[str]] = {}
    for row in heads:
        for key, value in row.items():
            if key not in COLUMNS and value is not None:
                kinds.setdefault(key, set()).add(_kind(value))
    as_json = {key for key, found in kinds.items() if len(found) > 1 or found == {"json"}}
    if not as_json:
        return heads
    return [{key: json.dumps(value) if key in as_json and value is not None else value
             for key, value in row.items()} for row in heads]


def head_frame(heads: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per head row; the fixed columns first (also when there are no rows), extras after."""
    frame = pd.DataFrame.from_records(_plain_extras(heads)) if heads else pd.DataFrame()
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series(dtype="float64" if column in HEAD_METRICS else "object")
    extras = [c for c in frame.columns if c not in COLUMNS]
    return frame[[*COLUMNS, *extras]]


def _number(value: Any) -> float | None:
    """``value`` as a float; None where it is not a number a float holds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def run_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per run: bits, tokens, NLL and each aggregate with ``_se``, ``_ci_low``, ``_ci_high``
    (empty where the document has none, e.g. an import from before uncertainties existed)."""
    records = []
    for row in runs:
        bits = row.get("effective_bits")
        bits = bits if isinstance(bits, dict) else {}
        record = {"key_bits": bits.get("key"), "value_bits": bits.get("value"),
                  "tokens": row.get("tokens"), "nll": row.get("nll")}
        for name in AGGREGATES:
            ci = row.get(f"{name}_ci")
            low, high = ci if isinstance(ci, list) and len(ci) == 2 else (None, None)
            record |= {name: row.get(name), f"{name}_se": row.get(f"{name}_se"),
                       f"{name}_ci_low": low, f"{name}_ci_high": high}
        records.append({"run": row.get("name"), **{k: _number(v) for k, v in record.items()}})
    frame = pd.DataFrame.from_records(records, columns=list(RUN_COLUMNS))
    numeric = [c for c in RUN_COLUMNS if c != "run"]
    frame[numeric] = frame[numeric].astype("float64")
    return frame


def without_value_metrics(heads: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``heads`` with the value metrics of K-only runs (a ``spec`` without ``value``) set to None."""
    k_only = {run.get("name") for run in runs
              if isinstance(run.get("spec"), dict) and run["spec"].get("value") is None}
    return [{**row, **dict.fromkeys(VALUE_METRICS)} if row.get("run") in k_only else row for row in heads]


def frame_of(document: dict[str, Any], table: str) -> pd.DataFrame:
    """``table`` ("heads" or "runs") of ``document``."""
    runs = document.get("runs") or []
    if table == "runs":
        return run_frame(runs)
    return head_frame(without_value_metrics(document.get("heads") or [], runs))


def to_csv(frame: pd.DataFrame) -> str:
    """A table as CSV with a header line."""
    return frame.to_csv(index=False)


def to_parquet(frame: pd.DataFrame) -> bytes:
    """A table as a Parquet file."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    return buffer.getvalue()
