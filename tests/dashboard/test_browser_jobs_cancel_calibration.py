"""The Jobs page in the browser: cancel, elapsed and remaining time, UTC timestamps, readable default
labels, and the calibration link to the Calibration page's query spectrum."""

from __future__ import annotations

import httpx
import pytest

from app.dashboard import results as R
from headq_jobs import store
from testkit.browser import figures, open_page, screenshot, wait_for_graphs
from testkit.synthetic import make_results

pytestmark = pytest.mark.browser
SPEC = {"kind": "evaluation", "model": {"id": "builtin:smollm2-135m"},
        "runs": [{"name": "k2", "key": {"bits": 2}}]}


@pytest.fixture(scope="module")
def calibration(server) -> tuple[str, dict]:
    """A calibration job imported from a document holding the synthetic query spectrum."""
    doc = make_results()
    cal = {k: doc[k] for k in ("schema_version", "model", "dataset", "versions", "seed", "device", "dtype")}
    cal |= {"kind": "calibration", "rank": 8, "runs": [], "heads": [], "timing": {"seconds": 0.0},
            "arrays": {"query_spectrum": doc["arrays"]["query_spectrum"]}}
    resp = httpx.post(f"{server.url}/api/v1/results/import", json=cal, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["items"][0]["id"], cal


def test_cancel_a_queued_job_through_the_api(server, page):
    job = httpx.post(f"{server.url}/api/v1/jobs", json=SPEC, timeout=30).json()
    open_page(page, f"{server.url}/dashboard/")
    row = page.page.locator("#jobs-list tr", has_text=job["id"][:8])
    assert "UTC" in row.inner_text() and f"evaluation · builtin:smollm2-135m · {job['created_at'][:10]}" in (
        row.inner_text())
    row.locator("button.job-cancel").click()
    page.page.wait_for_selector("#job-cancel-result", timeout=30_000)
    assert httpx.get(f"{server.url}/api/v1/jobs/{job['id']}", timeout=30).json()["status"] == "cancelled"
    page.page.wait_for_selector(f"#jobs-list tr:has-text('{job['id'][:8]}'):has-text('cancelled')",
                                timeout=30_000)
    assert row.locator("button.job-cancel").count() == 0
    assert page.errors == []


def test_running_job_shows_elapsed_and_time_left(server, page):
    job = httpx.post(f"{server.url}/api/v1/jobs", json=SPEC, timeout=30).json()
    with server.app.state.session_factory() as session:
        assert store.mark_running(session, job["id"], "test-worker") is not None
        assert store.update_progress(session, job["id"], 0.5, "evaluate k2")
    open_page(page, f"{server.url}/dashboard/")
    row = page.page.locator("#jobs-list tr", has_text=job["id"][:8])
    cells = row.locator("td").all_inner_texts()
    assert cells[7].endswith(" s") and cells[8].startswith("~")  # elapsed; time left at the same pace
    assert row.locator("button.job-cancel").inner_text() == "cancel"
    assert page.errors == []


def test_calibration_link_opens_its_spectrum(server, calibration, page):
    job_id, doc = calibration
    open_page(page, f"{server.url}/dashboard/")
    page.page.click(f"#jobs-list a:text('{job_id[:8]}')")
    page.page.wait_for_url(f"**/dashboard/calibration?job={job_id}", timeout=30_000)
    wait_for_graphs(page.page, "#cal-spectrum", 1)
    (fig,) = figures(page.page, "#cal-spectrum")
    assert fig["data"][0]["y"] == R.query_spectrum(doc, 0, 0) and fig["shapes"][0]["x0"] == 8.5
    open_page(page, f"{server.url}/dashboard/calibration?job={job_id}&layer=2&kv_head=1")
    wait_for_graphs(page.page, "#cal-spectrum", 1)
    (fig,) = figures(page.page, "#cal-spectrum")
    assert fig["data"][0]["y"] == R.query_spectrum(doc, 2, 1) and "layer 2 · KV head 1" in fig["title"]
    screenshot(page.page, "calibration")
    assert page.errors == []
