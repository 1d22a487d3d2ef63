"""Browser helpers the dashboard tests and benchmarks share: wait for Dash to settle, read Plotly
figures, click a heatmap cell, save a screenshot."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TIMEOUT_MS = 30_000


def open_page(console, url: str) -> None:
    """Navigate and wait until the network is idle (Dash callbacks done)."""
    console.page.goto(url)
    console.page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)


def wait_for_graphs(page, selector: str, count: int, with_data: int | None = None) -> None:
    """Wait until ``count`` Plotly graphs under ``selector`` are drawn and ``with_data`` of them
    (default: all) hold data (the others show an empty state)."""
    page.wait_for_function(
        """([sel, n, m]) => { const g = [...document.querySelectorAll(sel + ' .js-plotly-plot')];
             return g.length === n && g.filter(x => x.data && x.data.length > 0).length === m; }""",
        arg=[selector, count, count if with_data is None else with_data],
        timeout=TIMEOUT_MS,
    )


def figures(page, selector: str) -> list[dict]:
    """``[{data, shapes, title}]`` of the Plotly graphs under ``selector``, in page order."""
    return page.evaluate(
        """sel => [...document.querySelectorAll(sel + ' .js-plotly-plot')].map(g => ({
             data: g.data.map(t => ({type: t.type, z: t.z, x: t.x, y: t.y})),
             shapes: (g.layout.shapes || []).map(s => ({x0: s.x0, y0: s.y0})),
             title: g.layout.title && g.layout.title.text }))""",
        selector,
    )


def click_cell(page, graph_selector: str, layer: int, head: int) -> None:
    """Click the heatmap cell ``(layer, head)`` of the first graph matching ``graph_selector``."""
    graph = page.locator(graph_selector + " .js-plotly-plot").first
    box = graph.bounding_box()
    x, y = graph.evaluate(
        """(g, [h, l]) => { const L = g._fullLayout;
             return [L.xaxis._offset + L.xaxis.l2p(h), L.yaxis._offset + L.yaxis.l2p(l)]; }""",
        [head, layer],
    )
    page.mouse.click(box["x"] + x, box["y"] + y)


def screenshot_dir() -> Path:
    """Where :func:`screenshot` writes: ``$HEADQ_SCREENSHOTS`` (``scripts/screenshots.sh`` points it
    at docs/screenshots/), else a temporary folder: a test run never rewrites a committed file."""
    chosen = os.environ.get("HEADQ_SCREENSHOTS")
    folder = Path(chosen) if chosen else Path(tempfile.gettempdir()) / "headq-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(page, name: str) -> None:
    """Save a full-page PNG named ``name`` in :func:`screenshot_dir`."""
    page.screenshot(path=str(screenshot_dir() / f"{name}.png"), full_page=True)
