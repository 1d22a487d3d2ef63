"""Render a dashboard figure dict to PNG in headless Chromium (Playwright), with the plotly.js
bundled in the installed ``plotly`` package embedded inline: no network, the same drawing code the
dashboard's browsers run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import plotly

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``) for :func:`render_png`, closed on exit."""
    if not CHROMIUM.exists():
        raise ValueError(f"chromium: {CHROMIUM} is absent (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def render_png(browser: Any, figure: dict, width: int | None = None, height: int | None = None) -> bytes:
    """PNG bytes of a plotly figure ``{"data": [...], "layout": {...}}`` drawn in ``browser`` (a
    Playwright ``Browser``, e.g. from :func:`chromium`) at ``width`` x ``height`` CSS pixels (each:
    the layout's, else 900 x 450), scale 2 for print."""
    if not isinstance(figure, dict) or "data" not in figure:
        raise ValueError("figure: must be a plotly figure dict with 'data'")
    width = width or int((figure.get("layout") or {}).get("width") or 900)
    height = height or int((figure.get("layout") or {}).get("height") or 450)
    layout = {**(figure.get("layout") or {}), "width": width, "height": height}
    html = (
        f"<html><head><meta charset='utf-8'><script>{PLOTLY_JS.read_text()}</script></head>"
        "<body style='margin:0'><div id='g'></div></body></html>"
    )
    page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=2)
    try:
        page.set_content(html)
        page.evaluate(
            "([data, layout]) => Plotly.newPlot('g', data, layout, {staticPlot: true})",
            [figure["data"], layout],
        )
        return page.locator("#g").screenshot(type="png")
    finally:
        page.close()
