"""Screenshots of a running server's latest evaluation for docs/: its Run page (layer 7, head 7), its
Perplexity page and its Predictor check, in headless Chromium.

    .venv/bin/headq demo --exit-when-done          # then serve its database again:
    HEADQ_DATABASE_URL=sqlite:///.headq/headq.db .venv/bin/headq serve --port 8000 &
    .venv/bin/python scripts/demo_screenshots.py --url http://127.0.0.1:8000 --out docs/screenshots
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from testkit.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

PAGES = {"demo-run": "run?job={job}&layer=7&head=7", "demo-perplexity": "perplexity?job={job}",
         "demo-predictor": "predictor?job={job}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", default="docs/screenshots")
    args = parser.parse_args()
    jobs = httpx.get(f"{args.url}/api/v1/jobs", params={"kind": "evaluation", "status": "succeeded"},
                     timeout=30).json()["items"]
    if not jobs:
        raise SystemExit("no succeeded evaluation on that server")
    job = jobs[0]["id"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name, path in PAGES.items():
            page.goto(f"{args.url}/dashboard/{path.format(job=job)}")
            page.wait_for_load_state("networkidle", timeout=60_000)
            page.wait_for_timeout(1500)  # Plotly finishes drawing after the last callback
            page.screenshot(path=str(Path(args.out) / f"{name}.png"), full_page=True)
            print(f"wrote {Path(args.out) / f'{name}.png'}")
        browser.close()


if __name__ == "__main__":
    main()
