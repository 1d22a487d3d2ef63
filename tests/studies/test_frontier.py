"""The budget frontier (g): Pareto and hull verdicts on hand-made points, the hull against a brute
force over every mix of two plain points."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from studies.paper import frontier as G
from tests.studies.handmade import K2, hq, item, records, run


def _row(name: str, kind: str, bits: float, excess: float, side: str | None = None) -> dict:
    return {"run": name, "kind": kind, "key_bits": bits, "excess": excess, "side": side}


def _mix(plain: list[dict], bits: float) -> float:
    """Brute force: the least excess of any plain point or mix of two at <= ``bits`` key bits."""
    best = min((p["excess"] for p in plain if p["key_bits"] <= bits), default=np.inf)
    for a, b in itertools.permutations(plain, 2):
        if a["key_bits"] <= bits < b["key_bits"]:
            t = (bits - a["key_bits"]) / (b["key_bits"] - a["key_bits"])
            best = min(best, (1 - t) * a["excess"] + t * b["excess"])
    return best


def test_hull_matches_the_best_mix_of_two_plain_points():
    rng = np.random.default_rng(0)
    for _ in range(20):
        xs = rng.uniform(2.0, 5.0, 8)
        plain = [
            _row(f"p{i}", "plain", float(x), float(np.exp(-x) * rng.uniform(0.5, 2.0)))
            for i, x in enumerate(xs)
        ]
        hull, top = G.lower_hull(plain), float(xs.max())
        for bits in rng.uniform(xs.min(), xs.max(), 15):
            value, left, right = G.hull_at(hull, float(bits), top)
            assert value == pytest.approx(_mix(plain, float(bits)), rel=1e-12)
            assert left["key_bits"] <= bits and (right is None or bits < right["key_bits"])
        assert G.hull_at(hull, float(xs.min()) - 0.1, top) is None and G.hull_at(hull, top + 0.1, top) is None
        for excess in rng.uniform(0, 0.2, 10):
            bits = G.hull_bits(hull, float(excess))
            if bits is None:
                assert excess < min(p["excess"] for p in plain)
            else:  # the least bits whose best mix reaches the excess
                assert _mix(plain, bits + 1e-9) <= excess + 1e-9 and _mix(plain, bits - 1e-6) > excess


def _rows() -> list[dict]:
    return [
        _row("p2", "plain", 2.0, 9.0),
        _row("p3", "plain", 3.0, 5.0),  # on the chord p2-p4
        _row("p4", "plain", 4.0, 1.0),
        _row("p5", "plain", 5.0, 2.0),  # dominated by p4
        _row("h1", "HeadQ", 3.5, 2.0, "token s4"),  # Pareto, beats the hull (3.0 at 3.5 bits)
        _row("h2", "HeadQ", 3.25, 6.0, "token s8"),  # dominated by p3
        _row("h3", "HeadQ", 2.75, 5.5, "group s4"),  # Pareto, below the hull (6.0)
        _row("h4", "HeadQ", 3.75, 1.9, "group s2"),  # Pareto, below the hull (2.0)
        _row("h5", "HeadQ", 4.5, 0.1, "token s4"),  # outside 2.5..4
        _row("h6", "HeadQ", 1.5, 20.0, "token s4"),  # below the plain bits: no hull verdict
        _row("o", "other", 2.0, 0.0),
    ]


def test_frontier_gives_both_verdicts_per_point_and_per_side_code():
    view = G.frontier_view(_rows())
    assert [h["run"] for h in view["hull"]] == ["p2", "p4"]  # p3 on the chord (collinear) adds nothing
    assert view["plain_front"] == [(2.0, 9.0), (3.0, 5.0), (4.0, 1.0)]
    points = {p["run"]: p for p in view["headq_points"]}
    assert set(points) == {"h1", "h2", "h3", "h4", "h5", "h6"}
    assert [p for p in points if points[p]["in_range"]] == ["h3", "h2", "h1", "h4"]
    h1, h2, h3, h4 = (points[n] for n in ("h1", "h2", "h3", "h4"))
    assert h1["hull_excess"] == pytest.approx(3.0) and h1["hull_between"] == ["p2", "p4"]
    assert h1["pareto"] and h1["beats_hull"] and h1["hull_bits_to_match"] == pytest.approx(3.75)
    assert h1["plain_bits_to_match"] == 4.0
    assert h2["dominated_by"] == ["p3"] and not h2["pareto"] and h2["beats_hull"] is False
    assert h3["pareto"] and h3["hull_excess"] == pytest.approx(6.0) and h3["beats_hull"]
    assert h4["pareto"] and h4["hull_excess"] == pytest.approx(2.0) and h4["beats_hull"]
    assert points["h6"]["beats_hull"] is None and points["h6"]["hull_excess"] is None
    assert points["h5"]["hull_excess"] == pytest.approx(1.0) and points["h5"]["hull_between"] == ["p4", None]
    assert view["pareto"] == ["h3", "h1", "h4"] and view["beats_hull"] == ["h3", "h1", "h4"]
    sides = {s["side"]: s for s in view["sides"]}
    assert sides["token s4"] == {"side": "token s4", "points": 1, "beats_hull": ["h1"], "answer": True}
    assert sides["token s8"]["answer"] is False and sides["token s8"]["points"] == 1
    assert sides["token s2"] == {"side": "token s2", "points": 0, "beats_hull": [], "answer": False}


def test_pareto_needs_the_joint_frontier_not_only_no_plain_domination():
    rows = [
        _row("p2", "plain", 2.0, 9.0),
        _row("p4", "plain", 4.0, 1.0),
        _row("a", "HeadQ", 3.0, 2.0),
        _row("b", "HeadQ", 3.5, 2.5),  # no plain point dominates it, but HeadQ point a does
    ]
    points = {p["run"]: p for p in G.frontier_view(rows)["headq_points"]}
    assert (
        points["b"]["dominated_by"] == [] and not points["b"]["on_joint_front"] and not points["b"]["pareto"]
    )
    assert points["b"]["beats_hull"]  # below the hull: 9 + (1 - 9) * 0.75 = 3.0 at 3.5 bits
    assert points["a"]["pareto"]


def test_frontier_rows_take_k_only_per_channel_r0_runs_with_their_side_code():
    runs = [
        run("k2", {"key": K2}, 3.0, 30.0),
        run("k2+hq4s4g", {"key": K2, "headq": hq(4, 4, scale="group")}, 3.3, 25.0),
        run("k2-r128", {"key": {**K2, "residual": 128}}, 3.0, 25.0),
        run("k2-pt", {"key": {**K2, "axis": "per_token"}}, 3.0, 90.0),
        run("kv2", {"key": K2, "value": K2}, 3.0, 40.0, value_bits=3.0),
    ]
    rows = G.frontier_rows(records(item("budget-1", "budget", runs), item("exp2-controls", "exp2", runs)))
    assert rows == [
        {"run": "k2", "kind": "plain", "key_bits": 3.0, "excess": 10.0, "side": None},
        {"run": "k2+hq4s4g", "kind": "HeadQ", "key_bits": 3.3, "excess": 5.0, "side": "group s4"},
    ]
