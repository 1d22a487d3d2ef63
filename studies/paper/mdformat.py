"""Markdown formatting for the study's tables: a table, percentages, numbers, sections."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table; None cells print as ``–``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("–" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(v: float | None) -> str | None:
    """A share as a percentage with one decimal."""
    return None if v is None else f"{100 * v:.1f}%"


def num(v: float | None, digits: int = 4) -> str | None:
    """A number with ``digits`` significant digits."""
    return None if v is None else f"{v:.{digits}g}"


def vs(values: Sequence[float | None], digits: int = 4) -> str:
    """``a vs b vs ...`` with ``digits`` significant digits each."""
    return " vs ".join(num(v, digits) or "–" for v in values)


def section(title: str, jobs: Iterable[str], body: str) -> str:
    """A ``##`` section naming its source jobs."""
    names = ", ".join(f"`{j}`" for j in jobs) or "(no job file)"
    return f"## {title}\n\nFrom: {names}\n\n{body}\n"
