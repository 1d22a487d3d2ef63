"""Run and Compare pages in headless Chromium, as a new user meets them: the run's headline numbers,
what the per-head metrics cover, readable heatmaps and detail charts, and honest deep links."""

from __future__ import annotations

import pytest

from app.dashboard import results as R
from app.dashboard import run_views as V
from testkit.browser import TIMEOUT_MS, click_cell, open_page, screenshot, wait_for_graphs

pytestmark = pytest.mark.browser
HEATMAPS = ".run-heatmap"
PANEL_LAYOUTS = """sel => [...document.querySelectorAll(sel + ' .js-plotly-plot')].map(g => ({
    n: g.data.length, shapes: (g.layout.shapes || []).length, yrange: g._fullLayout.yaxis.range,
    xticks: [...g.querySelectorAll('.xtick text')].map(t => t.textContent),
    yticks: [...g.querySelectorAll('.ytick text')].map(t => t.textContent)}))"""
CBAR_TITLES = "() => [...document.querySelectorAll('.run-heatmap .cbtitle')].map(t => t.textContent)"
CELL_XY = "(g, [h, l]) => [g._fullLayout.xaxis._offset + g._fullLayout.xaxis.l2p(h), " \
          "g._fullLayout.yaxis._offset + g._fullLayout.yaxis.l2p(l)]"
ZRANGES = "sel => [...document.querySelectorAll(sel)].map(g => [g.data[0].zmin, g.data[0].zmax])"


def _run_page(page, server, job_id, query: str, with_data: int = 4) -> None:
    open_page(page, f"{server.url}/dashboard/run?job={job_id}&{query}")
    wait_for_graphs(page.page, HEATMAPS, 5, with_data=with_data)


def test_summary_and_coverage_sit_above_the_heatmaps(server, job_id, document, page):
    _run_page(page, server, job_id, "run=k2-headq-r8")
    summary = page.page.inner_text("#run-summary")
    assert summary == "k2-headq-r8: " + " · ".join(V.run_summary(document, "k2-headq-r8"))
    assert "share removed" in summary and summary.count("[") == 3 and "effective bits K 4 / V 16" in summary
    assert page.page.inner_text("#run-coverage") == V.coverage_line(document)
    summary_box = page.page.locator("#run-summary").bounding_box()
    assert summary_box["y"] < page.page.locator(HEATMAPS).first.bounding_box()["y"]
    assert page.errors == []


def test_heatmaps_tick_every_head_carry_units_and_hover_all_main_metrics(server, job_id, document, page):
    _run_page(page, server, job_id, "run=k2-v2", with_data=5)
    panels = page.page.evaluate(PANEL_LAYOUTS, HEATMAPS)
    assert all(sorted(p["xticks"]) == list("012345") and sorted(p["yticks"]) == list("0123") for p in panels)
    bars = page.page.evaluate(CBAR_TITLES)
    assert bars == [R.METRIC_UNITS[m] for m in [*R.MAIN_METRICS, "entropy"]]
    graph = page.page.locator(HEATMAPS + " .js-plotly-plot").first
    box, (x, y) = graph.bounding_box(), graph.evaluate(CELL_XY, [3, 2])
    page.page.mouse.move(box["x"] + x, box["y"] + y)
    page.page.wait_for_selector(HEATMAPS + " .hoverlayer .hovertext", timeout=TIMEOUT_MS)
    text = page.page.locator(HEATMAPS + " .hoverlayer .hovertext").first.text_content() or ""
    assert "layer 2, head 3" in text and all(f"{m} = " in text for m in R.MAIN_METRICS)
    assert f"attn_kl = {R.head_matrix(document, 'k2-v2', 'attn_kl')[2, 3]:.4g}" in text
    assert page.errors == []


def test_one_colour_scale_for_all_panels(server, job_id, document, page):
    _run_page(page, server, job_id, "run=k2-v2", with_data=5)
    page.page.click("#run-shared input[type=checkbox]")
    plots = HEATMAPS + " .js-plotly-plot"
    page.page.wait_for_function(
        "sel => [...document.querySelectorAll(sel)].every(g => g.data[0].zmin !== undefined)", arg=plots,
        timeout=TIMEOUT_MS)
    lo, hi = V.shared_range([R.head_matrix(document, "k2-v2", m) for m in [*R.MAIN_METRICS, "entropy"]])
    assert page.page.evaluate(ZRANGES, plots) == [pytest.approx([lo, hi])] * 5
    screenshot(page.page, "run-shared-scale")
    assert page.errors == []


def test_value_panel_message_of_a_key_only_run_fits(server, job_id, page):
    _run_page(page, server, job_id, "run=k2")
    graph = page.page.locator(HEATMAPS + " >> nth=3")
    note = graph.locator(".annotation").first
    outer, inner = graph.bounding_box(), note.bounding_box()
    words = " ".join(graph.locator(".annotation tspan").all_text_contents())
    assert "values are not quantized in k2" in words
    assert outer["x"] <= inner["x"] and inner["x"] + inner["width"] <= outer["x"] + outer["width"]
    assert page.errors == []


def test_clicked_head_goes_into_the_address_bar(server, job_id, page):
    _run_page(page, server, job_id, "run=k2-headq-r8")
    click_cell(page.page, HEATMAPS, layer=2, head=3)
    page.page.wait_for_function("() => location.search.endsWith('layer=2&head=3')", timeout=TIMEOUT_MS)
    assert page.page.url == f"{server.url}/dashboard/run?job={job_id}&run=k2-headq-r8&layer=2&head=3"
    page.page.reload()
    page.page.wait_for_selector("#run-detail-title:has-text('layer 2, head 3')", timeout=TIMEOUT_MS)
    assert page.errors == []


def test_detail_charts_read_as_panels_with_the_kept_tokens(server, job_id, document, page):
    run = "k2-headq-r8-v2-a2online"
    _run_page(page, server, job_id, f"run={run}&layer=1&head=4", with_data=5)
    wait_for_graphs(page.page, "#run-detail", 3)
    a2 = page.page.locator("#run-detail-a2 .js-plotly-plot")
    names = ["A² weight", "kept by the policy (≥ half the windows)", "cumulative share"]
    assert a2.evaluate("g => g.data.map(t => t.name)") == names
    rate = document["arrays"]["a2_keep_rate"][run][1][1]  # layer 1, head 4 reads KV head 1
    kept = [i for i, r in enumerate(rate) if r >= 0.5]
    assert kept and a2.evaluate("g => g.data[1].x") == kept
    across = page.page.locator("#run-detail-runs .js-plotly-plot")
    titles = across.evaluate("g => [...g.querySelectorAll('.g-xtitle, .g-x2title, .g-x3title, .g-x4title')]"
                             ".map(t => t.textContent)")
    assert titles == [f"{m} ({R.METRIC_UNITS[m]})" for m in R.MAIN_METRICS]
    labels = across.evaluate("g => [...g.querySelectorAll('.ytick text')].map(t => t.textContent)")
    assert sorted(labels) == sorted(R.run_names(document))  # dense included, whole names
    graph_x = across.bounding_box()["x"]
    assert all(b["x"] >= graph_x for b in (t.bounding_box() for t in across.locator(".ytick text").all()))
    screenshot(page.page, "run-detail-panels")
    assert page.errors == []


def test_out_of_range_head_shows_the_banner_without_an_outline(server, job_id, page):
    _run_page(page, server, job_id, "run=k2&layer=99&head=0")
    assert "outside this model" in page.page.inner_text("#run-detail [role=alert]")
    panels = [p for p in page.page.evaluate(PANEL_LAYOUTS, HEATMAPS) if p["n"]]
    assert all(p["shapes"] == 0 and p["yrange"] == [3.5, -0.5] for p in panels)
    assert page.errors == []


def test_unknown_run_says_so(server, job_id, document, page):
    _run_page(page, server, job_id, "run=k3-typo")
    shown = R.default_run(document)
    note = page.page.inner_text("#run-note")
    assert f"run: 'k3-typo' is not a configuration of this job; showing {shown}" in note
    assert shown in page.page.inner_text("#run-run")
    assert page.errors == []


def test_compare_shares_a_colour_scale_and_names_an_unknown_run(server, job_id, document, page):
    open_page(page, f"{server.url}/dashboard/compare?job={job_id}&run=k2&run_b=gone&metric=fisher")
    wait_for_graphs(page.page, "#cmp-a", 1)
    wait_for_graphs(page.page, "#cmp-b", 1)
    note = page.page.inner_text("#cmp-note")
    assert "run_b: 'gone' is not a configuration of this job; showing k2-headq-r8" in note
    lo, hi = V.shared_range([R.head_matrix(document, run, "fisher") for run in ("k2", "k2-headq-r8")])
    plots = "#cmp-a .js-plotly-plot, #cmp-b .js-plotly-plot"
    assert page.page.evaluate(ZRANGES, plots) == [pytest.approx([lo, hi])] * 2
    assert page.errors == []
