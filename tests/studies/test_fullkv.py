"""Full-KV table (e): the Pareto frontier over mean bits vs perplexity and each method against the
plain quantizers, on hand-made runs."""

from __future__ import annotations

import pytest

from studies.paper.fullkv import fullkv_front, fullkv_rows, method_rows
from tests.studies.handmade import K2, K3, hq, item, records, run

A2 = {"kind": "a2_online", "keep": 0.1}


def _rows() -> list[dict]:
    runs = [
        run("kv2", {"key": K2, "value": K2}, 3.0, 30.0, value_bits=3.0),  # mean 3
        run("kv2+hq8", {"key": K2, "value": K2, "headq": hq(8)}, 4.0, 24.0, value_bits=3.0),  # mean 3.5
        run("k3+v2", {"key": K3, "value": K2}, 4.0, 25.0, value_bits=3.0),  # mean 3.5, worse
        run("kv3", {"key": K3, "value": K3}, 4.0, 22.0, value_bits=4.0),  # mean 4, better
        run("kv2+a2", {"key": K2, "value": K2, "value_policy": A2}, 3.0, 31.0, value_bits=3.6),  # mean 3.3
        run(
            "kv2+hq8+a2",
            {"key": K2, "value": K2, "headq": hq(8), "value_policy": A2},
            4.0,
            21.0,
            value_bits=3.6,
        ),
    ]
    return fullkv_rows(records(item("exp4-fullkv", "exp4", runs)))


def test_fullkv_rows_group_and_mean_bits():
    rows = _rows()
    assert [r["group"] for r in rows] == ["dense", "rival", "method", "rival", "rival", "method", "method"]
    assert rows[2]["mean_bits"] == pytest.approx(3.5) and rows[5]["mean_bits"] == pytest.approx(3.3)


def test_fullkv_front_is_the_pareto_frontier_of_the_quantized_runs():
    # by mean bits: kv2 (3, 30), kv2+a2 (3.3, 31: dominated), kv2+hq8 (3.5, 24), k3+v2 (3.5, 25: dominated),
    # kv2+hq8+a2 (3.8, 21), kv3 (4, 22: dominated); dense left out
    assert fullkv_front(_rows()) == ["kv2", "kv2+hq8", "kv2+hq8+a2"]


def test_method_rows_name_the_best_plain_rival_and_the_cheapest_match():
    rows = {m["run"]: m for m in method_rows(_rows())}
    assert rows["kv2+hq8"]["best_rival"] == {"run": "k3+v2", "mean_bits": 3.5, "perplexity": 25.0}
    assert rows["kv2+hq8"]["cheapest_match"] == {"run": "kv3", "mean_bits": 4.0, "perplexity": 22.0}
    assert rows["kv2+a2"]["best_rival"]["run"] == "kv2" and rows["kv2+a2"]["cheapest_match"]["run"] == "kv2"
    assert rows["kv2+hq8+a2"]["mean_bits"] == pytest.approx(3.8)
    assert rows["kv2+hq8+a2"]["best_rival"]["run"] == "k3+v2" and rows["kv2+hq8+a2"]["cheapest_match"] is None
