"""Run-level charts: the predictor's colour legend and units, the two budget panels and the clipped
outlier, each checked against a direct computation and plotly's own validator."""

from __future__ import annotations

import importlib
from datetime import UTC, datetime

import numpy as np
import plotly.graph_objects as go
import pytest
from fastapi import FastAPI

from app.dashboard import charts as C
from app.dashboard import results as R
from app.dashboard.mount import mount_dashboard
from testkit.synthetic import make_results


@pytest.fixture(scope="module")
def pages():
    """The page modules (a page registers itself, so the Dash app must exist first)."""
    mount_dashboard(FastAPI(), "http://127.0.0.1:9")
    return {name: importlib.import_module(f"app.dashboard.pages.{name}") for name in ("jobs", "perplexity")}


def test_predictor_colours_are_named_and_axes_have_units():
    fig = C.predictor_figure(np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0, 5.0]),
                             np.array(["b", "a", "b"]), "fisher", 0.5)
    go.Figure(fig)
    marker = fig["data"][0]["marker"]
    assert marker["color"] == [1, 0, 1] and marker["colorbar"]["ticktext"] == ["a", "b"]
    scale = dict((round(v, 6), c) for v, c in marker["colorscale"])
    assert scale[0.0] == C.PALETTE[0] and scale[1.0] == C.PALETTE[1]
    assert fig["layout"]["xaxis"]["title"]["text"].endswith("[nats]")
    assert fig["layout"]["yaxis"]["title"]["text"] == "attention KL (attn_kl) [nats]"


def test_clip_limit_is_ten_times_the_lower_median():
    assert C.clip_limit([6.0, 0.7, 19.0, 3.9, 0.3]) is None  # 19 < 10 * 3.9
    assert C.clip_limit([6.0, 0.7, 900.0, 3.9, 0.3]) == 39.0
    assert C.clip_limit([0.1, 1000.0]) == 1.0 and C.clip_limit([-1.0, 0.0]) is None


def test_budget_panels_keep_kinds_apart_and_clip_an_outlier():
    doc = make_results()
    wrong = next(r for r in doc["runs"] if r["name"] == "k2-headq-r8-wrongsign")
    wrong["excess_perplexity"], wrong["excess_perplexity_ci"] = 900.0, [850.0, 950.0]
    key_only, key_value = R.budget_split(doc)
    assert {r["run"] for r in key_value} == {"k2-v2", "k2-headq-r8-v2-a2online"}
    assert all(r["mean_bits"] == (r["key_bits"] + 16.0) / 2 for r in key_only)
    fig = C.budget_panels(key_only, key_value)
    go.Figure(fig)
    by_name = {t["name"]: t for t in fig["data"]}
    fronts = [by_name["K only · Pareto frontier"], by_name["K and V · Pareto frontier"]]
    assert fronts[0]["xaxis"] == "x" and fronts[1]["xaxis"] == "x2"
    expected = C.pareto_front([(r["mean_bits"], r["excess"]) for r in key_value])
    assert list(zip(fronts[1]["x"], fronts[1]["y"], strict=True)) == expected
    limit = C.clip_limit([r["excess"] for r in key_only])
    off = by_name["K only · off the scale"]
    assert off["y"] == [limit] and off["text"] == ["k2-headq-r8-wrongsign +900"]
    assert fig["layout"]["yaxis"]["range"][1] == limit * 1.1 and "range" not in fig["layout"]["yaxis2"]
    assert all(900.0 not in t["y"] for t in fig["data"] if "off" not in t["name"])


def test_perplexity_csv_has_raw_numbers_and_split_intervals(pages):
    perplexity = pages["perplexity"]
    rows = R.perplexity_rows(make_results())
    lines = perplexity.csv_text(rows).splitlines()
    assert lines[0].startswith("run,perplexity,perplexity_lo,perplexity_hi,excess,excess_lo")
    hq = next(r for r in rows if r["run"] == "k2-headq-r8")
    row = lines[[r["run"] for r in rows].index("k2-headq-r8") + 1]
    cells = dict(zip(lines[0].split(","), row.split(","), strict=True))
    assert float(cells["excess_removed"]) == hq["excess_removed"]
    assert float(cells["excess_removed_lo"]) == hq["excess_removed_ci"][0]
    assert perplexity.table_rows(rows)[2]["excess_removed_ci"] == (
        f"[{hq['excess_removed_ci'][0]:.1%}, {hq['excess_removed_ci'][1]:.1%}]")


def test_job_times_labels_and_timestamps(pages):
    jobs = pages["jobs"]
    now = datetime(2026, 5, 1, 12, 10, tzinfo=UTC)
    job = {"status": "running", "progress": 0.25, "started_at": "2026-05-01T12:00:00Z", "kind": "evaluation",
           "model_id": "m", "created_at": "2026-05-01T11:59:00Z", "label": None}
    assert jobs.times(job, now) == (600.0, 600.0 * 0.75 / 0.25)
    assert jobs.times({**job, "status": "queued", "started_at": None}, now) == (None, None)
    done = {**job, "status": "succeeded", "progress": 1.0, "finished_at": "2026-05-01T12:05:00+00:00"}
    assert jobs.times(done, now) == (300.0, None)
    assert [jobs.duration(s) for s in (42, 185, 7620, None)] == ["42 s", "3 min 05 s", "2 h 07 min", ""]
    assert jobs.timestamp("2026-05-01T13:59:00+02:00") == "2026-05-01 11:59:00 UTC"
    assert jobs.job_label(job) == "evaluation · m · 2026-05-01"
    assert jobs.job_label({**job, "label": "x"}) == "x"
