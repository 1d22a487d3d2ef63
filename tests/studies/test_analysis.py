"""Tables a-d, f and h of the paper report on hand-made job items, each against a hand-computed
expectation or scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from studies.paper import analysis as A
from tests.studies.handmade import DENSE_PPL, K2, K3, hq, item, records, run


def _sweep() -> list[dict]:
    return [
        run("k2", {"key": K2}, 3.0, 30.0, heads=[{"key_mse": 1.0, "attn_kl": 0.5}]),
        run(
            "k2+hq16s8",
            {"key": K2, "headq": hq(16)},
            5.25,
            21.0,
            removed=0.9,
            heads=[{"key_mse": 0.9, "attn_kl": 0.05}],
        ),
        run("k2+hq16s4", {"key": K2, "headq": hq(16, 4)}, 4.25, 22.0, removed=0.8),
        run("k3", {"key": K3}, 4.0, 21.5, heads=[{"key_mse": 0.2, "attn_kl": 0.1}]),
    ]


def test_exp1_rows_and_goal():
    rows = A.exp1_rows(records(item("exp1-a", "exp1", _sweep())))
    assert [r["base"] for r in rows] == ["k2", "k3"]
    k2 = rows[0]
    assert k2["dense_ppl"] == pytest.approx(DENSE_PPL) and k2["excess"] == pytest.approx(10.0)
    assert k2["variants"] == {
        "r16s8": {"removed": 0.9, "key_bits": 5.25, "run": "k2+hq16s8"},
        "r16s4": {"removed": 0.8, "key_bits": 4.25, "run": "k2+hq16s4"},
    }
    assert rows[1]["variants"] == {}
    for r in rows:
        r["base"] = "k2-pc-g32-r0" if r["base"] == "k2" else r["base"]
    goal = A.goal_check(rows)
    assert goal["best_removed"] == 0.9 and goal["met"]
    assert A.goal_check(rows[1:]) == {"run": "k2-pc-g32-r0", "present": False}


def _controls() -> list[dict]:
    return [
        run(
            "k2",
            {"key": K2},
            3.0,
            30.0,
            heads=[{"attn_kl": 0.4, "key_mse": 1.0}, {"attn_kl": 0.6, "key_mse": 1.0}],
        ),
        run(
            "k2+q",
            {"key": K2, "headq": hq(8)},
            4.0,
            22.0,
            removed=0.8,
            heads=[{"attn_kl": 0.1, "key_mse": 0.8}],
        ),
        run(
            "k2+k",
            {"key": K2, "headq": hq(8, basis="key_pca")},
            4.0,
            26.0,
            removed=0.4,
            heads=[{"attn_kl": 0.3, "key_mse": 0.5}, {"attn_kl": 0.5, "key_mse": 0.7}],
        ),
        run(
            "k2+w",
            {"key": K2, "headq": hq(8, sign=-1)},
            4.0,
            40.0,
            removed=-1.0,
            heads=[{"attn_kl": 1.0}, {"attn_kl": 2.0}],
        ),
        run(
            "k2-out",
            {"key": K2, "intervention": {"subspace": "outside", "dims": 8, "seed": 0}},
            3.0,
            20.5,
            heads=[{"key_mse": 0.3, "attn_kl": 0.01}],
        ),
        run(
            "k2-in",
            {"key": K2, "intervention": {"subspace": "inside", "dims": 8, "seed": 0}},
            3.0,
            28.0,
            heads=[{"key_mse": 0.6, "attn_kl": 0.5}],
        ),
    ]


def test_controls_wrong_sign_and_null_space():
    recs = records(item("exp2-controls", "exp2", _controls()))
    assert A.basis_rows(recs) == [{"base": "k2", "rank": 8, "query_pca": 0.8, "key_pca": 0.4}]
    (wrong,) = A.wrong_sign_rows(recs)
    assert wrong["attn_kl"] == pytest.approx(1.5) and wrong["base_attn_kl"] == pytest.approx(0.5)
    assert wrong["worse_than_plain"] is True
    noise = A.nullspace_rows(recs)
    assert [(n["base"], n["subspace"], n["dims"], n["key_mse"]) for n in noise] == [
        ("k2-pc-g32-r0", "outside", 8, 0.3),
        ("k2-pc-g32-r0", "inside", 8, 0.6),
    ]
    assert noise[0]["excess"] == pytest.approx(0.5)
    (pair,) = A.nullspace_pairs(noise)
    assert pair["key_mse_ratio"] == pytest.approx(2.0) and pair["attn_kl_ratio"] == pytest.approx(50.0)
    assert pair["perplexity"] == [20.5, 28.0]
    assert A.nullspace_pairs(noise[:1]) == []


def test_basis_pairs_put_key_pca_next_to_query_pca_at_each_rank():
    (row,) = A.basis_pairs(records(item("exp2-controls", "exp2", _controls())))
    assert row["base"] == "k2" and row["rank"] == 8 and row["key_bits"] == 4.0
    assert row["key_mse"] == [pytest.approx(0.8), pytest.approx(0.6)]  # key_pca: mean of 0.5, 0.7
    assert row["attn_kl"] == [pytest.approx(0.1), pytest.approx(0.4)] and row["perplexity"] == [22.0, 26.0]
    assert row["counterexample"] is True  # lower key_mse, higher attn_kl and ppl
    assert A.basis_pairs(records(item("other-job", "exp2", _controls()))) == []


def test_counterexamples_need_lower_mse_higher_kl_and_ppl_at_equal_bits_and_window():
    r128 = {**K2, "residual": 128}
    runs = [
        run("a", {"key": K2}, 4.0, 25.0, heads=[{"key_mse": 0.1, "attn_kl": 0.3}]),
        run(
            "b",
            {"key": {**K2, "group_size": 64}, "headq": hq(4)},
            4.0,
            22.0,
            heads=[{"key_mse": 0.2, "attn_kl": 0.1}],
        ),
        run("c", {"key": K3}, 4.0, 24.0, heads=[{"key_mse": 0.15, "attn_kl": 0.2}]),
        run("d", {"key": K3}, 4.5, 21.0, heads=[{"key_mse": 0.5, "attn_kl": 0.01}]),  # other bits
        run(
            "e",
            {"key": K2, "intervention": {"subspace": "inside", "dims": 8, "seed": 0}},
            4.0,
            19.0,
            heads=[{"key_mse": 0.9, "attn_kl": 0.0}],
        ),  # interventions are excluded
        run("f", {"key": r128}, 4.0, 18.0, heads=[{"key_mse": 0.95, "attn_kl": 0.0}]),  # other window R
        run(
            "g", {"key": K3, "headq": hq(2, sign=-1)}, 4.0, 40.0, heads=[{"key_mse": 0.01, "attn_kl": 0.9}]
        ),  # wrong sign
        run("h", {"key": {**r128, "group_size": 64}}, 4.0, 19.5, heads=[{"key_mse": 0.5, "attn_kl": 0.1}]),
    ]
    pairs = A.counterexamples(records(item("x", "exp1", runs)))
    assert [(p["lower_mse"], p["other"]) for p in pairs] == [("a", "b"), ("c", "b"), ("h", "f"), ("a", "c")]
    assert pairs[0]["ppl_gap"] == pytest.approx(3.0) and pairs[0]["key_mse"] == [0.1, 0.2]
    assert pairs[0]["residual"] == 0 and pairs[2]["residual"] == 128
    assert A.counterexamples(records(item("x", "exp1", runs, corpus="shakespeare"))) == []


def test_predictor_rows_against_scipy_per_scope():
    rng = np.random.default_rng(1)

    def heads(n: int) -> list[dict]:
        return [
            {
                "layer": i,
                "head": 0,
                "fisher": float(f),
                "score_mse": float(s),
                "key_mse": float(k),
                "attn_kl": float(f * 1.1 + 0.01 * s),
            }
            for i, (f, s, k) in enumerate(rng.random((n, 3)))
        ]

    runs = [
        run("k2", {"key": K2}, 3.0, 30.0, heads=heads(6)),
        run("k3", {"key": K3}, 4.0, 22.0, heads=heads(5)),
        run(
            "k3n",
            {"key": K3, "intervention": {"subspace": "inside", "dims": 8, "seed": 0}},
            4.0,
            25.0,
            heads=heads(5),
        ),
    ]
    recs = A.predictor_runs(records(item("exp1-a", "exp1", runs)))
    assert [r["name"] for r in recs] == ["k2", "k3"]
    rows = {r["scope"]: r for r in A.predictor_rows(recs)}
    assert rows["all"]["heads"] == 11 and rows["3-bit keys"]["heads"] == 5
    for scope, chosen in (("all", recs), ("2-bit keys", recs[:1])):
        hs = [h for r in chosen for h in r["heads"]]
        for m in A.PREDICTORS:
            expected = spearmanr([h[m] for h in hs], [h["attn_kl"] for h in hs]).statistic
            assert rows[scope][m] == pytest.approx(expected)
    across = A.run_predictor_row(recs)
    assert across["runs"] == 2 and across["fisher"] is None  # two runs: too few for a rank correlation


def test_entropy_bins_shares_and_worst_heads():
    heads = [
        {"layer": i, "head": i % 2, "entropy": float(i), "attn_kl": float(10 - i), "route_flip": i / 10}
        for i in range(10)
    ]
    rec = records(item("exp1-a", "exp1", [run("k2", {"key": K2}, 3.0, 30.0, heads=heads)]))[1]
    view = A.entropy_view([rec], bins=5, worst=3)
    assert view["rho_attn_kl"] == pytest.approx(-1.0) and view["rho_route_flip"] == pytest.approx(1.0)
    total = sum(10 - i for i in range(10))  # 55
    assert view["bins"][0] == {
        "bin": 1,
        "heads": 2,
        "entropy": [0.0, 1.0],
        "attn_kl": 9.5,
        "route_flip": pytest.approx(0.05),
        "kl_share": pytest.approx(19 / total),
    }
    assert view["bins"][-1]["kl_share"] == pytest.approx(3 / total)
    assert sum(b["kl_share"] for b in view["bins"]) == pytest.approx(1.0)
    assert [h["layer"] for h in view["worst"]] == [0, 1, 2] and view["worst"][0]["run"] == "k2"


def test_entropy_pool_takes_the_2bit_per_channel_r0_plain_runs_and_pools_their_heads():
    def heads(offset: float) -> list[dict]:
        return [
            {"layer": i, "entropy": float(i) + offset, "attn_kl": float(i * i), "route_flip": 0.1 * i}
            for i in range(3)
        ]

    runs = [
        run("k2-pc-g32-r0", {"key": K2}, 3.0, 30.0, heads=heads(0.0)),
        run("k2-pc-g64-r0", {"key": {**K2, "group_size": 64}}, 2.5, 31.0, heads=heads(0.5)),
        run("k2-pc-g32-r128", {"key": {**K2, "residual": 128}}, 3.0, 25.0, heads=heads(9.0)),
        run("k2-pt-g32-r0", {"key": {**K2, "axis": "per_token"}}, 3.0, 90.0, heads=heads(9.0)),
        run("k3-pc-g32-r0", {"key": K3}, 4.0, 21.0, heads=heads(9.0)),
        run("k2-pc-g32-r0+hq8s8", {"key": K2, "headq": hq(8)}, 4.25, 21.0, heads=heads(9.0)),
    ]
    pool = A.entropy_pool(records(item("exp1-a", "exp1", runs)))
    assert [r["name"] for r in pool] == ["k2-pc-g32-r0", "k2-pc-g64-r0"]
    view = A.entropy_view(pool, bins=2)
    ent = [0, 1, 2, 0.5, 1.5, 2.5]
    kl = [0, 1, 4, 0, 1, 4]
    assert view["heads"] == 6 and view["rho_attn_kl"] == pytest.approx(spearmanr(ent, kl).statistic)
    # lowest-entropy half: entropies 0, 0.5, 1 -> attn_kl 0, 0, 1 of the total 10
    assert view["bins"][0]["kl_share"] == pytest.approx(0.1) and view["bins"][1]["kl_share"] == pytest.approx(
        0.9
    )


def test_shakespeare_rows_pair_the_calibrations():
    own = item(
        "shakespeare-own-cal",
        "shakespeare",
        [run("k2", {"key": K2}, 3.0, 30.0), run("k2+hq8s8", {"key": K2, "headq": hq(8)}, 4.0, 22.0, 0.8)],
    )
    sotu = item(
        "shakespeare-sotu-cal",
        "shakespeare",
        [run("k2", {"key": K2}, 3.0, 30.0), run("k2+hq8s8", {"key": K2, "headq": hq(8)}, 4.0, 25.0, 0.5)],
    )
    assert A.shakespeare_rows(records(own, sotu)) == [
        {"run": "k2+hq8s8", "rank": 8, "basis": "query_pca", "own_removed": 0.8, "sotu_removed": 0.5}
    ]
