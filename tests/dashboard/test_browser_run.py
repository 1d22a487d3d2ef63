"""Run page in headless Chromium: heatmaps side by side, a click selects a head everywhere, deep links."""

from __future__ import annotations

import numpy as np
import pytest

from app.dashboard import results as R
from testkit.browser import click_cell, figures, open_page, screenshot, wait_for_graphs

pytestmark = pytest.mark.browser
HEATMAPS = ".run-heatmap"


def test_run_heatmaps_render_one_trace_each(server, job_id, document, page):
    open_page(page, f"{server.url}/dashboard/run?job={job_id}&run=k2-v2")
    wait_for_graphs(page.page, HEATMAPS, 5)
    figs = figures(page.page, HEATMAPS)
    assert [len(f["data"]) for f in figs] == [1] * 5 and {f["data"][0]["type"] for f in figs} == {"heatmap"}
    for fig, metric in zip(figs, R.MAIN_METRICS, strict=False):
        assert metric in fig["title"]
        expected = R.head_matrix(document, "k2-v2", metric)
        np.testing.assert_allclose(np.array(fig["data"][0]["z"], dtype=float), expected, rtol=1e-12)
    screenshot(page.page, "run")
    assert page.errors == []


def test_value_panel_of_a_key_only_run_says_values_are_dense(server, job_id, page):
    open_page(page, f"{server.url}/dashboard/run?job={job_id}&run=k2")
    wait_for_graphs(page.page, HEATMAPS, 5, with_data=4)
    lines = page.page.locator(".run-heatmap >> nth=3").locator(".annotation tspan").all_text_contents()
    assert "values are not quantized in k2" in " ".join(lines)  # wrapped to fit the panel
    assert page.errors == []


def test_click_selects_head_in_every_panel_and_opens_detail(server, job_id, document, page):
    open_page(page, f"{server.url}/dashboard/run?job={job_id}&run=k2-headq-r8")
    wait_for_graphs(page.page, HEATMAPS, 5, with_data=4)
    click_cell(page.page, HEATMAPS, layer=2, head=3)
    page.page.wait_for_selector("#run-detail-title:has-text('layer 2, head 3')", timeout=30_000)
    page.page.wait_for_function(
        """() => [...document.querySelectorAll('.run-heatmap .js-plotly-plot')]
                 .filter(g => g.data.length)
                 .every(g => (g.layout.shapes || []).some(s => s.x0 === 2.5 && s.y0 === 1.5))""",
        timeout=30_000,
    )
    assert "KV head 1" in page.page.inner_text("#run-detail-title")  # head 3 of 6 reads KV head 1 of 2
    wait_for_graphs(page.page, "#run-detail", 3)
    a2, spectrum, across = figures(page.page, "#run-detail")
    assert a2["data"][0]["y"] == pytest.approx(document["arrays"]["a2_weights"]["k2-headq-r8"][2][1])
    assert spectrum["data"][0]["y"] == pytest.approx(document["arrays"]["query_spectrum"][2][1])
    assert page.page.locator("#run-detail text:has-text('rank 8')").count() == 1
    assert across["data"][0]["y"] == R.run_names(document)  # the head in every configuration, dense too
    screenshot(page.page, "run-head-detail")
    assert page.errors == []


def test_deep_link_opens_job_run_and_head(server, job_id, page):
    open_page(page, f"{server.url}/dashboard/run?job={job_id}&run=k2-headq-r8-wrongsign&layer=1&head=4")
    wait_for_graphs(page.page, HEATMAPS, 5, with_data=4)
    assert "k2-headq-r8-wrongsign" in page.page.inner_text("#run-run")
    assert "layer 1, head 4" in page.page.inner_text("#run-detail-title")
    shapes = figures(page.page, HEATMAPS)[0]["shapes"]
    assert shapes == [{"x0": 3.5, "y0": 0.5}]
    href = page.page.get_attribute("#run-detail-link", "href")
    assert href == f"/dashboard/run?job={job_id}&run=k2-headq-r8-wrongsign&layer=1&head=4"
    assert page.errors == []


def test_log_scale_and_other_metric_selector(server, job_id, document, page):
    open_page(page, f"{server.url}/dashboard/run?job={job_id}&run=k2")
    wait_for_graphs(page.page, HEATMAPS, 5, with_data=4)
    page.page.click("#run-log input[type=checkbox]")
    page.page.wait_for_function(
        """() => [...document.querySelectorAll('.run-heatmap .js-plotly-plot')]
                 .filter(g => g.data.length).every(g => g.layout.title.text.endsWith('(log)'))""",
        timeout=30_000,
    )
    fisher = np.array(figures(page.page, HEATMAPS)[0]["data"][0]["z"], dtype=float)
    np.testing.assert_allclose(fisher, np.log10(R.head_matrix(document, "k2", "fisher")), rtol=1e-12)
    page.page.click("#run-extra")
    page.page.get_by_role("option", name="route_flip", exact=True).click()  # the list opens in a portal
    page.page.wait_for_function(
        """() => [...document.querySelectorAll('.run-heatmap .js-plotly-plot')][4]
                 .layout.title.text.startsWith('route flip rate')""",
        timeout=30_000,
    )
    assert page.errors == []


def test_bad_deep_link_is_a_readable_error(server, job_id, page):
    open_page(page, f"{server.url}/dashboard/run?job={job_id}&layer=x")
    assert "layer: must be a whole number" in page.page.inner_text("[role=alert]")
    assert page.errors == []
