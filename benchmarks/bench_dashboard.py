"""Dashboard speed in a real headless browser: time from navigation to every Run heatmap drawn.

A real server (uvicorn, one worker, the real ``create_app``, SQLite in a temp dir) holds one
SYNTHETIC results document (testkit/synthetic.py: numbers of the right shapes, not a
measurement) of a 32-layer × 32-head model (8 KV heads, head_dim 128, 1024-token window) with 8
configurations, imported through ``POST /api/v1/results/import``. Chromium (Playwright) opens
``/dashboard/run?job=..&run=..`` and the clock stops when all five heatmaps hold their image.
"cold" is the first visit (the dashboard fetches the document from the API); "warm" visits reuse
the dashboard's cache of finished results; "in-app" clicks the Run link from another page (no page
reload, plotly.js already parsed). Target: under 1 s. Also timed: a click on a head until the
detail panel shows it. The machine's load average is recorded: it is shared.

    .venv/bin/python benchmarks/bench_dashboard.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testkit.browser import click_cell  # noqa: E402
from testkit.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from testkit.live_server import start_api  # noqa: E402
from testkit.synthetic import make_results  # noqa: E402

DRAWN = """() => { const g = [...document.querySelectorAll('.run-heatmap .js-plotly-plot')];
  return g.length === 5 && g.every(x => x.querySelector('.heatmaplayer image, .heatmaplayer .hm')); }"""


def _timed_visit(page, url: str) -> float:
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_function(DRAWN, timeout=120_000, polling="raf")
    return time.perf_counter() - start


def _busy_s(cdp) -> float:
    """Seconds the renderer's main thread has spent on tasks (CDP ``TaskDuration``)."""
    metrics = cdp.send("Performance.getMetrics")["metrics"]
    return next(m["value"] for m in metrics if m["name"] == "TaskDuration")


def _timed_link(page, cdp, from_url: str) -> tuple[float, float]:
    """In-app navigation: from the Perplexity page (plotly.js loaded), click the "Run" link.

    Returns ``(wall seconds, browser main-thread busy seconds)``.
    """
    page.goto(from_url)
    page.wait_for_selector("#ppl-bars .js-plotly-plot .bars", timeout=120_000)
    busy = _busy_s(cdp)
    start = time.perf_counter()
    page.click("#nav-run")
    page.wait_for_function(DRAWN, timeout=120_000, polling="raf")
    return time.perf_counter() - start, _busy_s(cdp) - busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dashboard.json")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    doc = make_results(
        layers=args.layers,
        heads=args.heads,
        kv_heads=max(1, args.heads // 4),
        head_dim=128,
        window=args.window,
        n_runs=args.runs,
    )
    doc_mb = len(json.dumps(doc)) / 2**20
    with tempfile.TemporaryDirectory() as tmp, start_api(Path(tmp)) as server:
        t0 = time.perf_counter()
        resp = httpx.post(f"{server.url}/api/v1/results/import", json=doc, timeout=600)
        resp.raise_for_status()
        import_s = time.perf_counter() - t0
        job = resp.json()["items"][0]["id"]
        t0 = time.perf_counter()
        httpx.get(f"{server.url}/api/v1/jobs/{job}/results", timeout=600).raise_for_status()
        api_get_s = time.perf_counter() - t0
        url = f"{server.url}/dashboard/run?job={job}&run=k2-headq-r8"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            cold = _timed_visit(page, url)
            warm = [_timed_visit(page, url) for _ in range(args.repeats)]
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            from_url = f"{server.url}/dashboard/perplexity?job={job}"
            links = [_timed_link(page, cdp, from_url) for _ in range(args.repeats)]
            in_app, busy = [w for w, _ in links], [b for _, b in links]
            clicks = []
            for i in range(args.repeats):
                layer, head = (3 * i + 1) % args.layers, (5 * i + 2) % args.heads
                start = time.perf_counter()
                click_cell(page, ".run-heatmap", layer, head)
                page.wait_for_selector(
                    f"#run-detail-title:has-text('layer {layer}, head {head} ')", timeout=120_000
                )
                clicks.append(time.perf_counter() - start)
            browser.close()
    result = {
        "benchmark": "dashboard_run_page",
        "layers": args.layers,
        "heads": args.heads,
        "configurations": args.runs,
        "window": args.window,
        "document_mib": round(doc_mb, 2),
        "import_s": round(import_s, 3),
        "api_results_get_s": round(api_get_s, 3),
        "cold_s": round(cold, 3),
        "warm_median_s": round(statistics.median(warm), 3),
        "warm_s": [round(w, 3) for w in warm],
        "in_app_median_s": round(statistics.median(in_app), 3),
        "in_app_s": [round(w, 3) for w in in_app],
        "in_app_browser_busy_median_s": round(statistics.median(busy), 3),
        "click_to_detail_median_s": round(statistics.median(clicks), 3),
        "target_s": 1.0,
        "warm_meets_target": statistics.median(warm) < 1.0,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "data": "synthetic (testkit/synthetic.py), shapes of a real evaluation",
    }
    rows = [
        ("results document (MiB)", result["document_mib"]),
        ("import via API (s)", result["import_s"]),
        ("GET /jobs/{id}/results, API alone (s)", result["api_results_get_s"]),
        ("navigation -> 5 heatmaps, cold (s)", result["cold_s"]),
        ("navigation -> 5 heatmaps, warm median (s)", result["warm_median_s"]),
        ("in-app link Perplexity -> Run, median (s)", result["in_app_median_s"]),
        ("  of which browser main thread busy (s)", result["in_app_browser_busy_median_s"]),
        ("click head -> detail, median (s)", result["click_to_detail_median_s"]),
    ]
    print(
        f"Run page, {args.layers} layers x {args.heads} heads x {args.runs} configurations (target < 1 s); "
        f"load average {result['load_average_1m']} on {result['cpus']} CPUs"
    )
    for name, value in rows:
        print(f"  {name:<44} {value:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
