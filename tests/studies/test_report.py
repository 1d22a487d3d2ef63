"""The paper-study report end to end on hand-made job items: the command line writes every output
(tables.md sections, summary, a deterministic bundle the API's schema accepts), the paper
side-by-side verdicts, and one figure through Chromium."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from headq_spec.results import Bundle
from studies.paper import report as P
from studies.paper.bundle import bundle_bytes, make_bundle
from studies.paper.mdformat import md_table
from studies.paper.specs import CAL_SOTU, Sizes, study_jobs
from studies.paper.summary import clean, paper_rows
from tests.studies.handmade import K2, K3, hq, item, run


def _items() -> tuple[dict, dict]:
    jobs = {j.name: j for j in study_jobs(Sizes(eval_tokens=256, calib_tokens=512, window=128))}
    ev = item("exp2-controls", "exp2", [run("k2", {"key": K2}, 3.0, 26.0)])
    ev["spec"] = jobs["exp2-controls"].spec
    ev["results"]["model"]["id"] = "builtin:smollm2-135m"
    cal_doc = {
        "schema_version": 1,
        "kind": "calibration",
        "model": {"id": "builtin:smollm2-135m"},
        "rank": 64,
    }
    cal = {
        "name": CAL_SOTU,
        "family": "calibration",
        "spec": jobs[CAL_SOTU].spec,
        "results": cal_doc,
        "artifact_base64": "AAEC",
    }
    return ev, cal


def test_bundle_puts_calibration_first_validates_and_is_deterministic():
    ev, cal = _items()
    bundle = make_bundle([ev, cal])
    assert [j["results"]["kind"] for j in bundle["jobs"]] == ["calibration", "evaluation"]
    assert set(bundle["jobs"][0]) == {"spec", "results", "artifact_base64"}
    Bundle.model_validate(bundle)
    data = bundle_bytes([ev, cal])
    assert data[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime 0: a regenerated bundle is byte-identical
    assert json.loads(gzip.decompress(data)) == bundle and bundle_bytes([ev, cal]) == data


def _sweep() -> list[dict]:
    heads = [
        {"layer": i, "entropy": float(i), "attn_kl": 0.1 * i, "route_flip": 0.05 * i, "key_mse": 1.0}
        for i in range(6)
    ]
    return [
        run("k2-pc-g32-r0", {"key": K2}, 3.0, 30.0, heads=heads),
        run("k2-pc-g32-r0+hq16s8", {"key": K2, "headq": hq(16)}, 5.25, 21.0, removed=0.9),
        run("k2-pc-g32-r0+hq4s4", {"key": K2, "headq": hq(4, 4)}, 3.5, 22.0, removed=0.8),
        run("k3-pc-g32-r0", {"key": K3}, 4.0, 21.5),
    ]


def test_main_writes_every_output_and_names_missing_jobs(tmp_path: Path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    it = item("exp1-k2-pc-g32", "exp1", _sweep())
    (jobs / f"{it['name']}.json.gz").write_bytes(gzip.compress(json.dumps(it).encode()))
    out = tmp_path / "out"
    assert P.main(["--jobs", str(jobs), "--out", str(out), "--no-figures"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "paper-cal-sotu" in summary["missing_jobs"] and "exp1-k2-pc-g32" not in summary["missing_jobs"]
    assert summary["provenance"][0]["commit"] == "abc"
    assert summary["frontier"]["pareto"] == summary["frontier"]["beats_hull"] == ["k2-pc-g32-r0+hq4s4"]
    assert summary["entropy"]["pooled"]["runs"] == ["k2-pc-g32-r0"]
    tables = (out / "tables.md").read_text()
    assert "## a. exp1: K-only sweep\n\nFrom: `exp1-k2-pc-g32`" in tables and "`paper-cal-sotu`" in tables
    assert "and on the joint frontier): **Yes**, 1 point(s)." in tables
    assert (
        "- token s4: yes (1 of 1 points: k2-pc-g32-r0+hq4s4)" in tables
        and "key_pca vs query_pca at the same rank" in tables
    )
    bundle = json.loads(gzip.decompress((out / "bundle.json.gz").read_bytes()))
    assert [j["results"]["kind"] for j in bundle["jobs"]] == ["evaluation"]


def test_render_draws_a_png(browser):
    from app.dashboard.charts import budget_figure
    from studies.paper.render import render_png

    png = render_png(
        browser, budget_figure([{"run": "k2", "kind": "plain", "key_bits": 3.0, "excess": 1.0}]),
        width=300, height=200,
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
    rows = paper_rows(goal, fullkv, predictors)
    assert [r["verdict"] for r in rows] == ["within", "mixed", "agrees"]
    assert rows[0]["ours"] == "90.0% (k2+hq16s8)"
    assert paper_rows({"best_removed": 0.5}, fullkv[:2], [])[0]["verdict"] == "below"
    assert clean({"a": [float("nan"), (1.0, float("inf"))]}) == {"a": [None, [1.0, None]]}
    assert md_table(["x", "y"], [[1, None]]) == "| x | y |\n|---|---|\n| 1 | – |"
