"""g. The budget frontier: HeadQ against plain key quantizers in (effective key bits, excess
perplexity), judged two ways: Pareto (no plain point at <= bits and <= excess, and on the joint
frontier) and hull (below the plain lower convex hull: what mixing two plain quantizers across
layers reaches)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from studies.paper.records import TIE, Record, k_only, unique

Row = dict[str, Any]
SIDE_KINDS = tuple(f"{scale} s{bits}" for scale in ("token", "group") for bits in (8, 4, 2))


def frontier_rows(records: Sequence[Record]) -> list[Row]:
    """``{run, kind, key_bits, excess, side}`` of the K-only per_channel R=0 runs of exp1 and budget,
    one per configuration; kind ``plain`` or ``HeadQ``, side ``"{side_scale} s{side_bits}"`` (HeadQ)."""
    rows = []
    for r in unique(records):
        spec = r["spec"]
        if not (
            r["family"] in ("exp1", "budget")
            and k_only(spec)
            and spec["key"]["axis"] == "per_channel"
            and spec["key"]["residual"] == 0
        ):
            continue
        hq = spec.get("headq")
        rows.append(
            {
                "run": r["name"],
                "kind": "HeadQ" if hq else "plain",
                "key_bits": r["key_bits"],
                "excess": r["excess"],
                "side": f"{hq.get('side_scale', 'token')} s{hq['side_bits']}" if hq else None,
            }
        )
    return rows


def pareto_rows(rows: Sequence[Row], x: str = "key_bits", y: str = "excess") -> list[Row]:
    """The rows on the Pareto frontier (lower ``x`` and ``y`` better), by ``x``: each row whose ``y``
    is below that of every row at fewer or equal ``x`` (of equal points the first counts)."""
    front: list[Row] = []
    for r in sorted(rows, key=lambda r: (r[x], r[y])):
        if not front or r[y] < front[-1][y]:
            front.append(r)
    return front


def lower_hull(rows: Sequence[Row]) -> list[Row]:
    """Vertices of the lower convex hull of the rows' Pareto frontier, by key bits: the best excess
    any mix of two rows reaches at each budget is the hull's linear interpolation."""
    hull: list[Row] = []
    for p in pareto_rows(rows):
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        hull.append(p)
    return hull


def _cross(a: Row, b: Row, c: Row) -> float:
    """z of (b - a) x (c - a) in (key_bits, excess): > 0 when a -> b -> c turns left (convex)."""
    return (b["key_bits"] - a["key_bits"]) * (c["excess"] - a["excess"]) - (b["excess"] - a["excess"]) * (
        c["key_bits"] - a["key_bits"]
    )


def hull_at(hull: Sequence[Row], bits: float, top: float) -> tuple[float, Row, Row | None] | None:
    """``(excess, left, right)``: the hull's excess at ``bits`` between its bracketing vertices
    (right None past the last vertex, where the hull stays flat up to ``top``, the most plain
    bits); None outside ``[first vertex, top]``."""
    if not hull or bits < hull[0]["key_bits"] - TIE or bits > top + TIE:
        return None
    for left, right in zip(hull, hull[1:], strict=False):
        if bits < right["key_bits"]:
            t = (bits - left["key_bits"]) / (right["key_bits"] - left["key_bits"])
            return left["excess"] + t * (right["excess"] - left["excess"]), left, right
    return hull[-1]["excess"], hull[-1], None


def hull_bits(hull: Sequence[Row], excess: float) -> float | None:
    """The fewest bits at which the hull reaches ``excess`` or less; None below its last vertex."""
    if not hull or excess < hull[-1]["excess"]:
        return None
    if excess >= hull[0]["excess"]:
        return hull[0]["key_bits"]
    for left, right in zip(hull, hull[1:], strict=False):
        if excess >= right["excess"]:
            t = (left["excess"] - excess) / (left["excess"] - right["excess"])
            return left["key_bits"] + t * (right["key_bits"] - left["key_bits"])
    return hull[-1]["key_bits"]


def frontier_view(rows: Sequence[Row], low: float = 2.5, high: float = 4.0) -> dict[str, Any]:
    """Both verdicts for every HeadQ point, the answers inside ``[low, high]`` key bits per
    criterion, and per side-code kind whether any of its points there beats the hull."""
    rows = [r for r in rows if r["kind"] in ("plain", "HeadQ") and None not in (r["key_bits"], r["excess"])]
    plain = [r for r in rows if r["kind"] == "plain"]
    joint, hull = pareto_rows(rows), lower_hull(plain)
    top = max((p["key_bits"] for p in plain), default=0.0)
    points = []
    for h in sorted((r for r in rows if r["kind"] == "HeadQ"), key=lambda r: (r["key_bits"], r["excess"])):
        dominated = [
            p["run"] for p in plain if p["key_bits"] <= h["key_bits"] + TIE and p["excess"] <= h["excess"]
        ]
        on_joint = any(j is h for j in joint)
        at = hull_at(hull, h["key_bits"], top)
        matching = [p["key_bits"] for p in plain if p["excess"] <= h["excess"]]
        points.append(
            {
                **h,
                "in_range": low - TIE <= h["key_bits"] <= high + TIE,
                "dominated_by": dominated,
                "on_joint_front": on_joint,
                "pareto": on_joint and not dominated,
                "hull_excess": None if at is None else at[0],
                "hull_between": None
                if at is None
                else [at[1]["run"], None if at[2] is None else at[2]["run"]],
                "beats_hull": None if at is None else h["excess"] < at[0],
                "hull_bits_to_match": hull_bits(hull, h["excess"]),
                "plain_bits_to_match": min(matching) if matching else None,
            }
        )
    inside = [p for p in points if p["in_range"]]
    sides = []
    for kind in SIDE_KINDS:
        mine = [p for p in inside if p["side"] == kind]
        beating = [p for p in mine if p["beats_hull"]]
        sides.append(
            {
                "side": kind,
                "points": len(mine),
                "beats_hull": [p["run"] for p in beating],
                "answer": bool(beating),
            }
        )
    return {
        "range": [low, high],
        "front": [(r["key_bits"], r["excess"]) for r in joint],
        "plain_front": [(r["key_bits"], r["excess"]) for r in pareto_rows(plain)],
        "hull": [{"run": r["run"], "key_bits": r["key_bits"], "excess": r["excess"]} for r in hull],
        "headq_points": points,
        "pareto": [p["run"] for p in inside if p["pareto"]],
        "beats_hull": [p["run"] for p in inside if p["beats_hull"]],
        "sides": sides,
    }
