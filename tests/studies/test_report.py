"""The paper-study report on hand-made job items: every table against a hand-computed expectation,
Spearman against scipy, the bundle against the API's own schema, one figure through Chromium."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from app.api.schemas import Bundle
from studies.paper import report as P
from studies.paper.specs import CAL_SOTU, Sizes, study_jobs

K2 = {"bits": 2, "axis": "per_channel", "group_size": 32, "residual": 0}
K3 = {**K2, "bits": 3}
DENSE_PPL = 20.0


def hq(rank: int, side_bits: int = 8, basis: str = "query_pca", sign: int = 1) -> dict:
    return {
        "rank": rank,
        "basis": basis,
        "sign": sign,
        "side_bits": side_bits,
        "seed": 0,
        "side_scale": "token",
    }


def run(
    name: str,
    spec: dict,
    key_bits: float,
    ppl: float,
    removed: float | None = None,
    value_bits: float = 16.0,
    heads: list[dict] | None = None,
) -> dict:
    """One run row (and its head rows, each {layer, head, metrics...})."""
    return {
        "name": name,
        "spec": {"name": name, **spec},
        "effective_bits": {"key": key_bits, "value": value_bits},
        "perplexity": ppl,
        "nll": math.log(ppl),
        "tokens": 100,
        "excess_perplexity": ppl - DENSE_PPL,
        "excess_removed": removed,
        "_heads": heads or [],
    }


def item(name: str, family: str, runs: list[dict], corpus: str = "sotu") -> dict:
    """A job item of studies.paper.run holding an evaluation document with a dense run first."""
    rows = [run("dense", {}, 16.0, DENSE_PPL), *runs]
    heads = [
        {
            "run": r["name"],
            "layer": h.get("layer", 0),
            "head": h.get("head", 0),
            "kv_head": 0,
            **{k: v for k, v in h.items() if k not in ("layer", "head")},
        }
        for r in rows
        for h in r["_heads"]
    ]
    doc = {
        "schema_version": 1,
        "kind": "evaluation",
        "model": {"id": "m", "layers": 2, "heads": 2},
        "dataset": {"name": corpus, "tokens": 100},
        "device": "cpu",
        "runs": [{k: v for k, v in r.items() if k != "_heads"} for r in rows],
        "heads": heads,
    }
    return {
        "name": name,
        "family": family,
        "spec": {},
        "results": doc,
        "artifact_base64": None,
        "wall_s": 1.0,
        "host": "h",
        "commit": "abc",
    }


def records(*items: dict) -> list[dict]:
    return P.run_records(items)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 40).astype(float)
    y = x + rng.integers(0, 3, 40)
    assert P.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    # hand case without ties: 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert P.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    np.testing.assert_array_equal(P.average_ranks([10, 20, 10, 30]), [1.5, 3, 1.5, 4])
    assert P.spearman([1, 2, float("nan"), 4, 5], [2, 1, 3, 4, 5]) == pytest.approx(0.8)  # nan pair dropped
    assert P.spearman([1, 1, 1], [1, 2, 3]) is None and P.spearman([1, 2], [1, 2]) is None
    with pytest.raises(ValueError, match="y"):
        P.spearman([1, 2, 3], [1, 2])


def test_bundle_puts_calibration_first_and_validates():
    jobs = {j.name: j for j in study_jobs(Sizes(eval_tokens=256, calib_tokens=512, window=128))}
    cal_doc = {
        "schema_version": 1,
        "kind": "calibration",
        "model": {"id": "builtin:smollm2-135m"},
        "rank": 64,
    }
    ev = item("exp2-controls", "exp2", [run("k2", {"key": K2}, 3.0, 26.0)])
    ev["spec"] = jobs["exp2-controls"].spec
    ev["results"]["model"]["id"] = "builtin:smollm2-135m"
    cal = {
        "name": CAL_SOTU,
        "family": "calibration",
        "spec": jobs[CAL_SOTU].spec,
        "results": cal_doc,
        "artifact_base64": "AAEC",
    }
    bundle = P.make_bundle([ev, cal])
    assert [j["results"]["kind"] for j in bundle["jobs"]] == ["calibration", "evaluation"]
    assert set(bundle["jobs"][0]) == {"spec", "results", "artifact_base64"}
    Bundle.model_validate(bundle)


def test_missing_jobs_names_the_absent_ones():
    names = [j.name for j in study_jobs()]
    assert P.missing_jobs(names[1:]) == [names[0]] and P.missing_jobs(names) == []


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
    rows = P.exp1_rows(records(item("exp1-a", "exp1", _sweep())))
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
    goal = P.goal_check(rows)
    assert goal["best_removed"] == 0.9 and goal["met"]
    assert P.goal_check(rows[1:]) == {"run": "k2-pc-g32-r0", "present": False}


def test_controls_wrong_sign_and_null_space():
    runs = [
        run(
            "k2",
            {"key": K2},
            3.0,
            30.0,
            heads=[{"attn_kl": 0.4, "key_mse": 1.0}, {"attn_kl": 0.6, "key_mse": 1.0}],
        ),
        run("k2+q", {"key": K2, "headq": hq(8)}, 4.0, 22.0, removed=0.8),
        run("k2+k", {"key": K2, "headq": hq(8, basis="key_pca")}, 4.0, 26.0, removed=0.4),
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
    recs = records(item("exp2-controls", "exp2", runs))
    assert P.basis_rows(recs) == [{"base": "k2", "rank": 8, "query_pca": 0.8, "key_pca": 0.4}]
    (wrong,) = P.wrong_sign_rows(recs)
    assert wrong["attn_kl"] == pytest.approx(1.5) and wrong["base_attn_kl"] == pytest.approx(0.5)
    assert wrong["worse_than_plain"] is True
    noise = P.nullspace_rows(recs)
    assert [(n["base"], n["subspace"], n["dims"], n["key_mse"]) for n in noise] == [
        ("k2-pc-g32-r0", "outside", 8, 0.3),
        ("k2-pc-g32-r0", "inside", 8, 0.6),
    ]
    assert noise[0]["excess"] == pytest.approx(0.5)
    (pair,) = P.nullspace_pairs(noise)
    assert pair["key_mse_ratio"] == pytest.approx(2.0) and pair["attn_kl_ratio"] == pytest.approx(50.0)
    assert pair["perplexity"] == [20.5, 28.0]
    assert P.nullspace_pairs(noise[:1]) == []


def test_counterexamples_need_lower_mse_higher_kl_and_ppl_at_equal_bits():
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
    ]
    pairs = P.counterexamples(records(item("x", "exp1", runs)))
    assert [(p["lower_mse"], p["other"]) for p in pairs] == [("a", "b"), ("c", "b"), ("a", "c")]
    assert pairs[0]["ppl_gap"] == pytest.approx(3.0) and pairs[0]["key_mse"] == [0.1, 0.2]
    assert P.counterexamples(records(item("x", "exp1", runs, corpus="shakespeare"))) == []


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
    recs = P.predictor_runs(records(item("exp1-a", "exp1", runs)))
    assert [r["name"] for r in recs] == ["k2", "k3"]
    rows = {r["scope"]: r for r in P.predictor_rows(recs)}
    assert rows["all"]["heads"] == 11 and rows["3-bit keys"]["heads"] == 5
    for scope, chosen in (("all", recs), ("2-bit keys", recs[:1])):
        hs = [h for r in chosen for h in r["heads"]]
        for m in P.PREDICTORS:
            expected = spearmanr([h[m] for h in hs], [h["attn_kl"] for h in hs]).statistic
            assert rows[scope][m] == pytest.approx(expected)
    across = P.run_predictor_row(recs)
    assert across["runs"] == 2 and across["fisher"] is None  # two runs: too few for a rank correlation


def test_fullkv_verdicts():
    runs = [
        run("kv2", {"key": K2, "value": K2}, 3.0, 30.0, value_bits=3.0),
        run("kv2+hq8", {"key": K2, "value": K2, "headq": hq(8)}, 4.0, 24.0, value_bits=3.0),  # mean 3.5
        run("k3+v2", {"key": K3, "value": K2}, 4.0, 25.0, value_bits=3.0),  # mean 3.5, worse
        run("kv3", {"key": K3, "value": K3}, 4.0, 22.0, value_bits=4.0),  # mean 4, better
    ]
    rows = P.fullkv_rows(records(item("exp4-fullkv", "exp4", runs)))
    assert [r["group"] for r in rows] == ["dense", "rival", "method", "rival", "rival"]
    assert rows[2]["mean_bits"] == pytest.approx(3.5)
    verdicts = {(v["method"], v["rival"]): v["winner"] for v in P.budget_verdicts(rows)}
    assert verdicts == {
        ("kv2+hq8", "kv2"): "neither",
        ("kv2+hq8", "k3+v2"): "method",
        ("kv2+hq8", "kv3"): "neither",
    }


def test_entropy_bins_and_worst_heads():
    heads = [
        {"layer": i, "head": i % 2, "entropy": float(i), "attn_kl": float(10 - i), "route_flip": i / 10}
        for i in range(10)
    ]
    rec = records(item("exp1-a", "exp1", [run("k2", {"key": K2}, 3.0, 30.0, heads=heads)]))[1]
    view = P.entropy_view(rec, bins=5, worst=3)
    assert view["rho_attn_kl"] == pytest.approx(-1.0) and view["rho_route_flip"] == pytest.approx(1.0)
    assert view["bins"][0] == {
        "bin": 1,
        "heads": 2,
        "entropy": [0.0, 1.0],
        "attn_kl": 9.5,
        "route_flip": pytest.approx(0.05),
    }
    assert [h["layer"] for h in view["worst"]] == [0, 1, 2]


def test_frontier_answers_the_budget_question():
    rows = [
        {"run": "p2", "kind": "plain", "key_bits": 2.25, "excess": 9.0},
        {"run": "p3", "kind": "plain", "key_bits": 3.0, "excess": 5.0},
        {"run": "p4", "kind": "plain", "key_bits": 4.0, "excess": 1.0},
        {"run": "h1", "kind": "HeadQ", "key_bits": 3.5, "excess": 2.0},  # beats p3 (the best at <= 3.5)
        {"run": "h2", "kind": "HeadQ", "key_bits": 3.25, "excess": 6.0},  # worse than p3
        {"run": "h3", "kind": "HeadQ", "key_bits": 4.5, "excess": 0.1},  # outside 2.5..4
        {"run": "o", "kind": "other", "key_bits": 2.0, "excess": 0.0},
    ]
    view = P.frontier_view(rows)
    assert view["plain_front"] == [(2.25, 9.0), (3.0, 5.0), (4.0, 1.0)]
    assert view["front"] == [(2.25, 9.0), (3.0, 5.0), (3.5, 2.0), (4.0, 1.0), (4.5, 0.1)]
    points = {p["run"]: p for p in view["headq_points"]}
    assert set(points) == {"h1", "h2"} and view["headq_beats_plain"]
    assert points["h1"]["plain_best_at_or_below"] == 5.0 and points["h1"]["plain_bits_to_match"] == 4.0
    assert points["h1"]["beats_costlier_plain"] is False and not points["h2"]["beats_plain_frontier"]
    assert [w["run"] for w in view["winners"]] == ["h1"]
    assert not P.frontier_view(rows[:3] + rows[4:5])["headq_beats_plain"]


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
    assert P.shakespeare_rows(records(own, sotu)) == [
        {"run": "k2+hq8s8", "rank": 8, "basis": "query_pca", "own_removed": 0.8, "sotu_removed": 0.5}
    ]


def test_main_writes_every_output_and_names_missing_jobs(tmp_path: Path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for it in (item("exp1-k2-pc-g32", "exp1", _sweep()),):
        (jobs / f"{it['name']}.json.gz").write_bytes(gzip.compress(json.dumps(it).encode()))
    out = tmp_path / "out"
    assert P.main(["--jobs", str(jobs), "--out", str(out), "--no-figures"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "paper-cal-sotu" in summary["missing_jobs"] and "exp1-k2-pc-g32" not in summary["missing_jobs"]
    assert summary["provenance"][0]["commit"] == "abc"
    tables = (out / "tables.md").read_text()
    assert "## a. exp1: K-only sweep\n\nFrom: `exp1-k2-pc-g32`" in tables and "`paper-cal-sotu`" in tables
    bundle = json.loads(gzip.decompress((out / "bundle.json.gz").read_bytes()))
    assert [j["results"]["kind"] for j in bundle["jobs"]] == ["evaluation"]


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="/usr/bin/chromium is absent")
def test_render_draws_a_png():
    from app.dashboard.figures import budget_figure
    from studies.paper.render import render_png

    png = render_png(
        budget_figure([{"run": "k2", "kind": "plain", "key_bits": 3.0, "excess": 1.0}]), width=300, height=200
    )
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (600, 400)  # device scale factor 2


def test_paper_rows_give_plain_verdicts():
    goal = {"best_removed": 0.9, "best_run": "k2+hq16s8"}
    fullkv = [
        {"run": "kv2", "perplexity": 30.0},
        {"run": "kv2+hq8+a2-online", "perplexity": 25.0},
        {"run": "kv2+hq8+a2-oracle", "perplexity": 31.0},
    ]
    predictors = [{"scope": "all", "fisher": 0.9, "score_mse": 0.8, "key_mse": 0.3}]
    rows = P.paper_rows(goal, fullkv, predictors)
    assert [r["verdict"] for r in rows] == ["within", "mixed", "agrees"]
    assert rows[0]["ours"] == "90.0% (k2+hq16s8)"
    assert P.paper_rows({"best_removed": 0.5}, fullkv[:2], [])[0]["verdict"] == "below"
    assert P.clean({"a": [float("nan"), (1.0, float("inf"))]}) == {"a": [None, [1.0, None]]}
    assert P.md_table(["x", "y"], [[1, None]]) == "| x | y |\n|---|---|\n| 1 | – |"


def test_unique_keeps_one_record_per_configuration():
    a = item("exp1-a", "exp1", [run("k2+hq8s8", {"key": K2, "headq": hq(8)}, 4.0, 22.0)])
    b = item("exp2-controls", "exp2", [run("k2+hq8s8-query_pca", {"key": K2, "headq": hq(8)}, 4.0, 22.1)])
    other_cal = item("exp2-b", "exp2", [run("k2+hq8s8", {"key": K2, "headq": hq(8)}, 4.0, 23.0)])
    other_cal["spec"] = {"calibration_job": "another"}
    kept = P.unique(r for r in records(a, b, other_cal) if r["name"] != "dense")
    assert [(r["job"], r["name"]) for r in kept] == [("exp1-a", "k2+hq8s8"), ("exp2-b", "k2+hq8s8")]
