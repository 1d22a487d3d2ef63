"""Retrieval page (issue 16): the charts against direct computations on a seeded retrieval document,
and the page in headless Chromium against the real server (accuracy heatmaps dense first, the
needle-attention heatmap, a clicked head linked to the Run page of an evaluation of the same model)."""

from __future__ import annotations

import random
import uuid
from typing import Any

import httpx
import numpy as np
import pytest

from app.dashboard import retrieval_charts as RC
from headq_spec.results import ResultsDocument
from testkit.browser import click_cell, figures, open_page, screenshot, wait_for_graphs
from testkit.synthetic import make_results

LAYERS, HEADS, KV_HEADS = 4, 6, 2
LENGTHS, DEPTHS = [256, 512], [0.0, 50.0, 100.0]
K2 = {"bits": 2, "axis": "per_channel", "group_size": 32, "residual": 0}


def retrieval_document(model_id: str = "synthetic/test-model", seed: int = 0) -> dict[str, Any]:
    """A seeded retrieval results document: runs k2, dense (listed second), k2+headq8; 2 samples per
    cell; per-head rows of the quantized runs."""
    rng = random.Random(seed)
    runs = [("k2", {"name": "k2", "key": K2}, 10.0), ("dense", {"name": "dense"}, 16.0),
            ("k2+headq8", {"name": "k2+headq8", "key": K2, "headq": {"rank": 8}}, 12.0)]
    cells = [(n, d, s) for n in LENGTHS for d in DEPTHS for s in range(2)]
    prompts: list[dict[str, Any]] = [
        {"index": i, "length": n, "depth": d, "sample": s, "needle_start": 40, "needle_tokens": 12,
         "name": "Alice", "number": f"{1234500 + i}"} for i, (n, d, s) in enumerate(cells)]
    answers, heads, rows, accuracy = [], [], [], {}
    for name, spec, bits in runs:
        correct = [name == "dense" or rng.random() < 0.5 for _ in prompts]
        answers += [{"run": name, "prompt": p["index"], "text": p["number"] if ok else "0", "correct": ok}
                    for p, ok in zip(prompts, correct, strict=True)]
        by_cell: dict[tuple[int, float], list[bool]] = {}
        for p, ok in zip(prompts, correct, strict=True):
            by_cell.setdefault((p["length"], p["depth"]), []).append(ok)
        accuracy[name] = [[float(np.mean(by_cell[n, d])) for d in DEPTHS] for n in LENGTHS]
        if name != "dense":
            for p in prompts:
                for layer in range(LAYERS):
                    for head in range(HEADS):
                        lost = (0.3 if (layer, head) == (2, 3) else 0.01) * rng.random()
                        heads.append({"run": name, "layer": layer, "head": head, "kv_head": head // 3,
                                      "attn_kl": rng.random() / 10, "prompt": p["index"],
                                      "length": p["length"], "depth": p["depth"], "needle_mass_dense": 0.5,
                                      "needle_mass": 0.5 - lost, "needle_mass_lost": lost})
        rows.append({"name": name, "spec": spec, "effective_bits": {"key": bits, "value": 16.0},
                     "accuracy": float(np.mean(correct)), "correct": sum(correct), "prompts": len(prompts)})
    doc = {"schema_version": 1, "kind": "retrieval",
           "dataset": {"name": "sotu", "split": "eval", "tokens": 9000},
           "model": {"id": model_id, "layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": 16},
           "runs": rows, "heads": heads,
           "retrieval": {"lengths": LENGTHS, "depths": DEPTHS, "samples": 2, "new_tokens": 12,
                         "template": "chat", "prompts": prompts, "answers": answers, "accuracy": accuracy}}
    return ResultsDocument.model_validate(doc).model_dump(exclude_unset=True)


def test_accuracy_heatmaps_put_dense_first_and_show_the_grid():
    doc = retrieval_document()
    drawn = RC.accuracy_figures(doc)
    assert [f["layout"]["title"]["text"].split(" · ")[0] for f in drawn] == ["dense", "k2", "k2+headq8"]
    for figure in drawn:
        name = figure["layout"]["title"]["text"].split(" · ")[0]
        mine = [a["correct"] for a in doc["retrieval"]["answers"] if a["run"] == name]
        grid = np.array(figure["data"][0]["z"]) / 100
        assert grid.shape == (len(LENGTHS), len(DEPTHS)) and grid.mean() == pytest.approx(np.mean(mine))
    assert "K 10.00 b" in drawn[1]["layout"]["title"]["text"]
    table = RC.run_table(doc)
    assert [r["run"] for r in table] == ["dense", "k2", "k2+headq8"] and table[0]["accuracy"] == 1.0


def test_needle_lost_matrix_is_the_mean_over_prompts():
    doc = retrieval_document()
    matrix = RC.needle_lost_matrix(doc, "k2")
    direct = np.zeros((LAYERS, HEADS))
    for layer in range(LAYERS):
        for head in range(HEADS):
            direct[layer, head] = np.mean([h["needle_mass_dense"] - h["needle_mass"] for h in doc["heads"]
                                           if (h["run"], h["layer"], h["head"]) == ("k2", layer, head)])
    np.testing.assert_allclose(matrix, direct)
    assert RC.top_heads(matrix, 1)[0][:2] == (2, 3)
    assert RC.share_in_top(matrix, LAYERS * HEADS) == pytest.approx(1.0)
    assert RC.quantized_runs(doc) == ["k2", "k2+headq8"]
    assert RC.head_of_click({"points": [{"x": 3, "y": 2}]}) == (2, 3) and RC.head_of_click(None) is None
    assert RC.needle_lost_figure(np.full((2, 2), np.nan), "k2")["data"] == []


def _import(server, document: dict[str, Any]) -> str:
    """Id of the job created by importing ``document``."""
    imported = httpx.post(f"{server.url}/api/v1/results/import", json=document, timeout=30)
    assert imported.status_code == 201, imported.text
    return imported.json()["items"][0]["id"]


@pytest.mark.browser
def test_retrieval_page_draws_and_links_a_head_to_the_run_page(server, page):
    """The head links to the evaluation of the retrieval's own model (a model of its own here: the
    session's server holds evaluations of other documents too)."""
    model = f"synthetic/retrieval-{uuid.uuid4().hex[:8]}"
    evaluation = make_results(layers=LAYERS, heads=HEADS, kv_heads=KV_HEADS)
    evaluation["model"]["id"] = model
    job_id = _import(server, evaluation)
    doc = retrieval_document(model_id=model)
    retrieval_id = _import(server, doc)
    open_page(page, f"{server.url}/dashboard/retrieval?job={retrieval_id}&run=k2")
    wait_for_graphs(page.page, "main", 4)  # three accuracy heatmaps and the heads' heatmap
    drawn = figures(page.page, "main")
    assert [f["title"].split(" · ")[0] for f in drawn[:3]] == ["dense", "k2", "k2+headq8"]
    shown = np.array(drawn[3]["data"][0]["z"], dtype=float)
    np.testing.assert_allclose(shown, RC.needle_lost_matrix(doc, "k2"))
    assert "layer 2, head 3" in page.page.inner_text("#ret-top")
    page.page.locator("#ret-heads").scroll_into_view_if_needed()  # below the fold: click where it is seen
    click_cell(page.page, "#ret-heads", layer=2, head=3)
    link = page.page.wait_for_selector("#ret-run-link", timeout=30_000)
    href = link.get_attribute("href")
    assert f"job={job_id}" in href and "run=k2" in href and "layer=2" in href and "head=3" in href
    assert page.page.locator("[role=alert]").count() == 0
    screenshot(page.page, "retrieval")
    assert page.errors == []


@pytest.mark.browser
def test_the_jobs_list_links_a_retrieval_job_to_its_page(server, page):
    """A finished retrieval job's id on the Jobs page opens the Retrieval page (it was plain text)."""
    retrieval_id = _import(server, retrieval_document(seed=5))
    open_page(page, f"{server.url}/dashboard/")
    page.page.click(f"#jobs-list a:text('{retrieval_id[:8]}')")
    page.page.wait_for_url(f"**/dashboard/retrieval?job={retrieval_id}", timeout=30_000)
    wait_for_graphs(page.page, "main", 4)
    assert page.errors == []
