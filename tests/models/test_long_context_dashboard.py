"""The dashboard's long-context views: the excess NLL against token position (Run and Perplexity
pages) from a real evaluation's results, the note on sampled query rows, and old documents."""

from __future__ import annotations

import importlib

import plotly.graph_objects as go
import pytest
from fastapi import FastAPI

from app.dashboard import charts as C
from app.dashboard.mount import mount_dashboard
from headq_core.config import QuantConfig, RunSpec
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from testkit.synthetic import make_results
from tests.models.tiny import loaded


@pytest.fixture(scope="module")
def doc() -> dict:
    runs = [RunSpec("dense"), RunSpec("k2", key=QuantConfig(bits=2, group_size=8, residual=8))]
    return evaluate(loaded("llama"), CorpusSpec(split="eval"), runs, window=64, max_tokens=128,
                    attention="blockwise", head_rows=12)


@pytest.fixture(scope="module")
def run_page():
    mount_dashboard(FastAPI(), "http://127.0.0.1:9")  # a page registers itself on the Dash app
    return importlib.import_module("app.dashboard.pages.run")


def test_position_figure_plots_the_excess_of_each_run_at_its_bucket_starts(doc):
    block = doc["position_nll"]
    fig = C.position_figure(block, ["dense", "k2"])
    go.Figure(fig)  # plotly's own validator
    (trace,) = fig["data"]  # the dense baseline has no excess of its own to show
    assert trace["name"] == "k2" and trace["x"] == block["edges"][:-1]
    assert trace["y"] == block["excess_nll"]["k2"]
    assert trace["customdata"] == [e - 1 for e in block["edges"][1:]]
    assert fig["layout"]["xaxis"]["type"] == "log"
    assert "excess NLL over dense" in fig["layout"]["yaxis"]["title"]["text"]


def test_position_figure_without_a_dense_run_or_the_block(doc):
    block = {k: v for k, v in doc["position_nll"].items() if k != "excess_nll"} | {"baseline": None}
    fig = C.position_figure(block, ["dense", "k2"])
    assert [t["y"] for t in fig["data"]] == [block["nll"]["dense"], block["nll"]["k2"]]
    assert fig["layout"]["title"]["text"].startswith("NLL against")
    old = make_results()  # a document from before the position buckets
    assert "position_nll" not in old
    assert C.position_figure(old.get("position_nll"), ["k2"])["layout"]["annotations"][0]["text"].startswith(
        "No NLL per position")


def test_run_page_says_which_rows_the_metrics_read(doc, run_page):
    line = run_page.sampled_rows_line(doc)
    rows = doc["dataset"]["attention"]["head_rows"]
    assert line.startswith(f"Per-head metrics from {len(rows)} sampled query rows of each window of 64")
    assert f"positions {rows[0]} to 63" in line
    assert run_page.sampled_rows_line(make_results()) is None


def test_the_study_summarises_positions_in_token_weighted_ranges_and_an_svg(doc):
    import xml.dom.minidom

    from studies.long_context import coarse, position_svg, signed

    block = doc["position_nll"]
    ranges = coarse(block, "k2", groups=4)
    assert ranges[0][0] == block["edges"][0] and ranges[-1][1] == block["edges"][-1] - 1
    n = len(block["tokens"])
    lo, hi = n // 4, 2 * n // 4
    tokens, excess = block["tokens"][lo:hi], block["excess_nll"]["k2"][lo:hi]
    weighted = sum(t * v for t, v in zip(tokens, excess, strict=True))
    assert ranges[1][2] == pytest.approx(weighted / sum(tokens))
    svg = xml.dom.minidom.parseString(position_svg(block, ["k2"]))
    (line,) = svg.getElementsByTagName("polyline")
    assert len(line.getAttribute("points").split()) == n
    assert signed(-1e-9) == "0" and signed(0.01234) == "+0.0123"
