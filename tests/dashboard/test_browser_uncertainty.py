"""Uncertainty in the browser: the perplexity page's intervals and error bars, the paired
difference on the compare page, the interval of Spearman rho; and an older document without
per-window values drawn without error bars or errors."""

from __future__ import annotations

import httpx
import pytest

from app.dashboard import results as R
from app.dashboard.stats import spearman_interval
from testkit.browser import open_page, screenshot, wait_for_graphs
from testkit.live_server import LiveServer
from testkit.synthetic import make_results

pytestmark = pytest.mark.browser
SHAPE = {"layers": 4, "heads": 6, "kv_heads": 2, "head_dim": 16, "window": 32}  # conftest's document
ERRORS = "sel => document.querySelector(sel + ' .js-plotly-plot').data.map(t => t.error_y || null)"


def _import(server: LiveServer, doc: dict) -> str:
    resp = httpx.post(f"{server.url}/api/v1/results/import", json=doc, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["items"][0]["id"]


@pytest.fixture(scope="module")
def old_job_id(server: LiveServer) -> str:
    """Id of a job imported from a document that predates per-window values."""
    return _import(server, make_results(**SHAPE, uncertainty=False))


def test_perplexity_page_shows_intervals_and_error_bars(server, job_id, document, page):
    open_page(page, f"{server.url}/dashboard/perplexity?job={job_id}")
    wait_for_graphs(page.page, "main", 4, 3)  # the position plot is empty: no position_nll here
    assert page.page.inner_text("#ppl-uncertainty") == R.uncertainty_line(document)
    assert "over 16 windows (496 tokens scored)" in R.uncertainty_line(document)
    (bars,) = page.page.evaluate(ERRORS, "#ppl-bars")
    runs = document["runs"]
    assert bars["array"] == pytest.approx([r["perplexity_ci"][1] - r["perplexity"] for r in runs])
    assert bars["arrayminus"] == pytest.approx([r["perplexity"] - r["perplexity_ci"][0] for r in runs])
    (removed,) = page.page.evaluate(ERRORS, "#ppl-removed")
    shares = [(r["excess_removed"], r["excess_removed_ci"]) for r in runs if r["excess_removed"] is not None]
    assert removed["arrayminus"] == pytest.approx([share - ci[0] for share, ci in shares])
    budget = page.page.evaluate(ERRORS, "#ppl-budget")  # per panel: kinds with error bars, then the frontier
    assert [e is None for e in budget] == [False, False, True, False, False, True]
    k2 = next(r for r in runs if r["name"] == "k2")
    cell = page.page.locator("#ppl-table tr", has_text="k2").first.locator("td[data-dash-column=excess_ci]")
    assert cell.inner_text() == f"[{k2['excess_perplexity_ci'][0]:.4g}, {k2['excess_perplexity_ci'][1]:.4g}]"
    screenshot(page.page, "perplexity-intervals")
    assert page.errors == []


def test_older_document_has_no_error_bars(server, old_job_id, page):
    open_page(page, f"{server.url}/dashboard/perplexity?job={old_job_id}")
    wait_for_graphs(page.page, "main", 4, 3)  # the position plot is empty: no position_nll here
    assert "No intervals" in page.page.inner_text("#ppl-uncertainty")
    for graph in ("#ppl-bars", "#ppl-removed", "#ppl-budget"):
        assert all(e is None for e in page.page.evaluate(ERRORS, graph))
    assert page.page.locator("[role=alert]").count() == 0 and page.errors == []


def test_compare_gives_the_paired_difference(server, job_id, old_job_id, document, page):
    open_page(page, f"{server.url}/dashboard/compare?job={job_id}&run=k2&run_b=k2-headq-r8&metric=attn_kl")
    text = page.page.wait_for_selector("#cmp-ppl:has-text('A − B')", timeout=30_000).inner_text()
    assert text == R.perplexity_difference(document, "k2", document, "k2-headq-r8", same_doc=True)
    assert text.startswith("Perplexity A − B = 5.3 [") and "not distinguishable" not in text
    twin = make_results(**SHAPE, seed=1)  # other values on the same windows
    twin_id = _import(server, twin)
    open_page(page, f"{server.url}/dashboard/compare?job={job_id}&run=k2&job_b={twin_id}&run_b=k2")
    same = page.page.wait_for_selector("#cmp-ppl:has-text('A − B')", timeout=30_000).inner_text()
    assert same == R.perplexity_difference(document, "k2", twin, "k2", same_doc=False)
    assert same.startswith("Perplexity A − B = ") and same.endswith(": not distinguishable on these windows.")
    open_page(page, f"{server.url}/dashboard/compare?job={job_id}&run=k2&job_b={old_job_id}&run_b=k2")
    mixed = page.page.wait_for_selector("#cmp-ppl:has-text('A − B')", timeout=30_000).inner_text()
    assert mixed == "Perplexity A − B = 0: no per-window values (an older document), so no interval."
    assert page.errors == []


def test_predictor_gives_the_interval_of_rho(server, job_id, old_job_id, document, page):
    """The evaluator's window interval for the whole selection and each configuration's row; an
    older document falls back to resampling the heads."""
    open_page(page, f"{server.url}/dashboard/predictor?job={job_id}")
    text = page.page.wait_for_selector("#pred-rho", timeout=30_000).inner_text()
    points = R.predictor_points(document, R.run_names(document))
    rho = R.rank_correlations(points)
    pooled = document["rank_correlations"]
    for name in ("fisher", "key_mse"):
        lo, hi = pooled[name]["ci"]
        assert f"ρ(attn_kl, {name}) = {rho[name]:.3f} [{lo:.3f}, {hi:.3f}]" in text
    assert "paired bootstrap over the 16 windows" in text
    k2 = next(r for r in document["runs"] if r["name"] == "k2")["rank_correlations"]["fisher"]
    cell = page.page.locator("#pred-table tr", has_text="k2").first.locator("td[data-dash-column=fisher]")
    assert cell.inner_text() == f"{k2['rho']:.3f} [{k2['ci'][0]:.3f}, {k2['ci'][1]:.3f}]"
    open_page(page, f"{server.url}/dashboard/predictor?job={old_job_id}")
    text = page.page.wait_for_selector("#pred-rho", timeout=30_000).inner_text()
    old = R.predictor_points(make_results(**SHAPE, uncertainty=False))
    for name in ("fisher", "key_mse"):
        lo, hi = spearman_interval(old[name], old["attn_kl"])
        assert f"[{lo:.3f}, {hi:.3f}]" in text
    assert "1000 bootstrap resamples of the heads" in text
    assert page.errors == []
