"""The dashboard mounted in the real API process (single uvicorn worker): it is served under
/dashboard, and many concurrent Dash callbacks that each call the API over HTTP all complete
(no deadlock between the WSGI thread pool, the event loop and FastAPI's thread pool)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from app.dashboard import create_dash
from testkit.live_server import free_port


def _route(server_url: str, path: str, search: str) -> httpx.Response:
    """Ask the Dash pages router (a server-side callback) for a page's layout."""
    body = {
        "output": ".._pages_content.children..._pages_store.data..",
        "outputs": [
            {"id": "_pages_content", "property": "children"},
            {"id": "_pages_store", "property": "data"},
        ],
        "inputs": [
            {"id": "_pages_location", "property": "pathname", "value": path},
            {"id": "_pages_location", "property": "search", "value": search},
        ],
        "changedPropIds": ["_pages_location.pathname"],
        "state": [],
    }
    return httpx.post(f"{server_url}/dashboard/_dash-update-component", json=body, timeout=60)


def test_dashboard_is_mounted(server):
    resp = httpx.get(f"{server.url}/dashboard/", timeout=30)
    assert resp.status_code == 200 and "_dash-config" in resp.text
    assert '"requests_pathname_prefix":"\\u002fdashboard\\u002f"' in resp.text  # JSON-escaped slashes


def test_concurrent_callbacks_calling_the_api_do_not_deadlock(server, job_id):
    # 24 layouts at once, three times the dashboard's 8 WSGI threads; each layout makes two API calls
    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(lambda _: _route(server.url, "/dashboard/run", f"?job={job_id}"), range(24)))
    assert [a.status_code for a in answers] == [200] * 24
    assert all(job_id in a.text and "run-heat" in a.text for a in answers)


def test_create_dash_checks_its_arguments():
    with pytest.raises(ValueError, match="api_base_url"):
        create_dash("127.0.0.1:8000")
    with pytest.raises(ValueError, match="requests_pathname_prefix"):
        create_dash(f"http://127.0.0.1:{free_port()}", "dashboard")


def test_two_apps_in_one_process_each_get_every_callback():
    a = create_dash("http://127.0.0.1:1", "/dashboard/")
    b = create_dash("http://127.0.0.1:2", "/dashboard/")
    assert set(a.callback_map) == set(b.callback_map) and len(a.callback_map) >= 10
