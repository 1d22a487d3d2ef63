"""The table ``headq eval`` and ``headq demo`` end with: one line per run of a results document with
perplexity, excess perplexity and share of the excess removed (each with its 95% interval when the
document has one) and the effective key / value bits."""

from __future__ import annotations

from typing import Any

HEADER = ("run", "perplexity [95% CI]", "excess [95% CI]", "removed [95% CI]", "K bits", "V bits")


def _cell(row: dict[str, Any], name: str, fmt: str) -> str:
    value = row.get(name)
    if value is None:
        return "-"
    ci = row.get(f"{name}_ci")
    return f"{value:{fmt}}" + (f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else "")


def _bits(row: dict[str, Any], side: str) -> str:
    bits = (row.get("effective_bits") or {}).get(side)
    return "-" if bits is None else f"{bits:.2f}"


def results_table(doc: dict[str, Any]) -> str:
    """The runs of ``doc`` as an aligned text table (header, rule, one line per run)."""
    lines = [HEADER] + [
        (str(row["name"]), _cell(row, "perplexity", ".3f"), _cell(row, "excess_perplexity", "+.3f"),
         _cell(row, "excess_removed", ".1%"), _bits(row, "key"), _bits(row, "value"))
        for row in doc.get("runs") or []]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                      enumerate(zip(line, widths, strict=True))).rstrip() for line in lines]
    return "\n".join([text[0], "-" * len(text[0]), *text[1:]])
