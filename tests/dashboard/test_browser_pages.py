"""Every page in headless Chromium against the real server: loads without console errors, draws
what the API holds (checked against direct computations), submits a job, shows empty and error states."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from scipy.stats import spearmanr

from app.dashboard import charts as C
from app.dashboard import results as R
from app.dashboard.mount import mount_dashboard
from headq_jobs import store
from testkit.browser import figures, open_page, screenshot, wait_for_graphs
from testkit.live_server import LiveServer, free_port, start_api

pytestmark = pytest.mark.browser
PLOT = "sel => document.querySelector(sel + ' .js-plotly-plot')"  # + a property path
PAGES = {  # path, graphs drawn, graphs with data (the Run page's default run has dense values)
    "jobs": ("", 0, 0),
    "calibration": ("calibration", 0, 0),
    "run": ("run", 6, 4),  # + the position plot, empty for this document (it predates position_nll)
    "predictor": ("predictor", 2, 2),
    "perplexity": ("perplexity", 4, 3),  # likewise
    "compare": ("compare", 3, 3),
}


@pytest.mark.parametrize("name", list(PAGES))
def test_each_page_loads_without_console_errors(server, job_id, page, name):
    path, graphs, with_data = PAGES[name]
    open_page(page, f"{server.url}/dashboard/{path}?job={job_id}")
    if graphs:
        wait_for_graphs(page.page, "main", graphs, with_data)
    assert page.page.locator("[role=alert]").count() == 0
    screenshot(page.page, name)
    assert page.errors == []


def test_jobs_page_lists_jobs_and_submits_through_the_api(server, job_id, page):
    open_page(page, f"{server.url}/dashboard/")
    assert job_id[:8] in page.page.inner_text("#jobs-list")
    page.page.fill("#form-label", "from-the-browser")
    page.page.fill("#form-window", "512")
    page.page.fill("#form-head_windows", "4")
    assert not page.page.is_checked("#form-headq input[type=checkbox]")  # no calibration: no HeadQ
    page.page.click("#form-submit")  # a plain 2-bit key evaluation, accepted
    created = page.page.wait_for_selector("#form-created", timeout=30_000).inner_text()
    new_id = re.search(r"Created job ([0-9a-f-]{36})", created).group(1)
    listed = httpx.get(f"{server.url}/api/v1/jobs", timeout=30).json()["items"]
    (job,) = [j for j in listed if j["id"] == new_id]
    assert job["label"] == "from-the-browser" and job["status"] == "queued"
    assert [r["name"] for r in job["spec"]["runs"]] == ["dense", "k2"]
    dataset = job["spec"]["dataset"]
    assert (dataset["window"], dataset["head_windows"], dataset["source"]) == (512, 4, "builtin")
    page.page.wait_for_selector(f"#jobs-list :text('{new_id[:8]}')", timeout=30_000)  # live refresh
    assert page.errors == []


def test_jobs_page_shows_live_progress(server, page):
    spec = {
        "kind": "evaluation",
        "label": "live",
        "model": {"id": "builtin:smollm2-135m"},
        "runs": [{"name": "k2", "key": {"bits": 2}}],
    }
    job = httpx.post(f"{server.url}/api/v1/jobs", json=spec, timeout=30).json()
    open_page(page, f"{server.url}/dashboard/")
    row = page.page.locator("#jobs-list tr", has_text=job["id"][:8])
    assert "queued" in row.inner_text()
    with server.app.state.session_factory() as session:  # what a worker does while it runs the job
        assert store.mark_running(session, job["id"], "test-worker") is not None
        assert store.update_progress(session, job["id"], 0.4, "evaluate k2")
    page.page.wait_for_selector(f"#jobs-list tr:has-text('{job['id'][:8]}'):has-text('40%')", timeout=30_000)
    assert "running" in row.inner_text() and "evaluate k2" in row.inner_text()
    assert page.errors == []


def test_writes_need_the_users_own_token(tmp_path, page):
    with start_api(tmp_path, token="s3cret") as guarded:
        open_page(page, f"{guarded.url}/dashboard/")
        page.page.click("#form-submit")  # the server has a token, the dashboard lends it to nobody
        alert = page.page.wait_for_selector("#form-result [role=alert]", timeout=30_000).inner_text()
        assert "401" in alert
        page.page.fill("#form-api_token", "s3cret")
        page.page.click("#form-submit")
        created = page.page.wait_for_selector("#form-created", timeout=30_000).inner_text()
        assert "Created job" in created
        assert len(httpx.get(f"{guarded.url}/api/v1/jobs", timeout=30).json()["items"]) == 1
    assert page.errors == []


def test_unknown_job_in_a_link_is_said(server, job_id, page):
    open_page(page, f"{server.url}/dashboard/run?job=no-such-job")
    assert "job: no-such-job is not a succeeded evaluation job" in page.page.inner_text("[role=alert]")
    assert page.errors == []


def test_predictor_prints_spearman_of_the_heads(server, job_id, document, page):
    open_page(page, f"{server.url}/dashboard/predictor?job={job_id}")
    text = page.page.wait_for_selector("#pred-rho", timeout=30_000).inner_text()
    rows = [r for r in document["heads"] if all(r[m] > 0 for m in ("fisher", "key_mse", "attn_kl"))]
    kl = [r["attn_kl"] for r in rows]
    for name in ("fisher", "key_mse"):
        rho = spearmanr([r[name] for r in rows], kl).statistic
        assert f"ρ(attn_kl, {name}) = {rho:.3f}" in text
    assert f"{len(rows)} heads" in text
    wait_for_graphs(page.page, "main", 2)
    bar = page.page.evaluate(PLOT + ".data[0].marker.colorbar", "#pred-fisher")
    assert bar["ticktext"] == sorted({r["run"] for r in rows})  # the legend of the colours
    titles = page.page.evaluate(PLOT + ".layout.yaxis.title.text", "#pred-fisher")
    assert titles == "attention KL (attn_kl) [nats]"
    assert page.errors == []


def test_perplexity_table_sorts_and_exports(server, job_id, document, page):
    open_page(page, f"{server.url}/dashboard/perplexity?job={job_id}")
    cells = page.page.locator("#ppl-table td[data-dash-column=run]")
    assert cells.all_inner_texts() == R.run_names(document)
    page.page.click("#ppl-table th[data-dash-column=perplexity] .column-header--sort")
    page.page.wait_for_function(
        "() => document.querySelector('#ppl-table td[data-dash-column=run]').innerText === 'dense'"
    )
    by_ppl = [r["name"] for r in sorted(document["runs"], key=lambda r: r["perplexity"])]
    assert cells.all_inner_texts() == by_ppl
    removed = next(r for r in document["runs"] if r["name"] == "k2-headq-r8")["excess_removed"]
    cell = page.page.locator("#ppl-table tr", has_text="k2-headq-r8").first
    assert cell.locator("td[data-dash-column=excess_removed]").inner_text() == f"{removed:.1%}"
    with page.page.expect_download() as info:
        page.page.click("#ppl-export")
    download = info.value
    assert download.suggested_filename == f"{job_id}-perplexity.csv"
    with open(download.path(), "rb") as f:
        body = f.read()
    assert not body.startswith(b"\xef\xbb\xbf") and body.startswith(b"run,perplexity,")
    assert len(body.decode().splitlines()) == len(document["runs"]) + 1
    assert page.errors == []


def test_perplexity_budget_view_keeps_k_only_and_kv_runs_apart(server, job_id, document, page):
    open_page(page, f"{server.url}/dashboard/perplexity?job={job_id}")
    wait_for_graphs(page.page, "#ppl-budget", 1)
    (fig,) = figures(page.page, "#ppl-budget")
    names = page.page.evaluate(PLOT + ".data.map(t => t.name)", "#ppl-budget")
    traces = dict(zip(names, fig["data"], strict=True))
    key_only, key_value = R.budget_split(document)
    for panel, rows, x in (("K only", key_only, "key_bits"), ("K and V", key_value, "mean_bits")):
        front = C.pareto_front([(r[x], r["excess"]) for r in rows if r["kind"] != "other"])
        line = traces[f"{panel} · Pareto frontier"]
        assert list(zip(line["x"], line["y"], strict=True)) == [tuple(p) for p in front]
    plain = [r for r in key_only if r["kind"] == "plain"]
    assert traces["K only · plain"]["x"] == [r["key_bits"] for r in plain]
    assert "K only" in fig["title"] and "K and V" in fig["title"]
    assert page.errors == []


def test_compare_difference_is_b_minus_a(server, job_id, document, page):
    open_page(page, f"{server.url}/dashboard/compare?job={job_id}&run=k2&run_b=k2-headq-r8&metric=attn_kl")
    wait_for_graphs(page.page, "main", 3)
    diff = np.array(figures(page.page, "#cmp-diff")[0]["data"][0]["z"], dtype=float)
    expected = R.head_matrix(document, "k2-headq-r8", "attn_kl") - R.head_matrix(document, "k2", "attn_kl")
    np.testing.assert_allclose(diff, expected, rtol=1e-12)
    assert page.errors == []


def test_empty_state_when_no_results(tmp_path, page):
    with start_api(tmp_path) as empty:
        for path in ("", "run", "predictor"):
            open_page(page, f"{empty.url}/dashboard/{path}")
            assert page.page.locator(".headq-empty").count() >= 1
        screenshot(page.page, "empty-state")
    assert page.errors == []


def test_unreachable_api_is_a_readable_error(page):
    alone = FastAPI()
    mount_dashboard(alone, f"http://127.0.0.1:{free_port()}")  # no API listens there
    with LiveServer(alone, free_port()) as live:
        for path in ("", "run", "perplexity"):
            open_page(page, f"{live.url}/dashboard/{path}")
            assert "cannot be reached" in page.page.inner_text("[role=alert]")
        screenshot(page.page, "api-unreachable")
    assert page.errors == []
