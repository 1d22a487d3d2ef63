"""studies/retrieval.py at smoke size on a tiny saved model (issue 16): it writes the JSON and the
Markdown report, and its per-head finding agrees with a direct computation from the document."""

from __future__ import annotations

import json

import numpy as np
import pytest

from studies.retrieval import head_finding, main
from tests.dashboard.test_retrieval_page import retrieval_document
from tests.models.tiny import save_tiny


def test_study_writes_json_and_report_at_smoke_size(tmp_path):
    folder = tmp_path / "tiny"
    save_tiny(folder, "llama")
    out = tmp_path / "results" / "retrieval.json"
    main(["--model", str(folder), "--device", "cpu", "--lengths", "256", "--depths", "0", "100",
          "--new-tokens", "2", "--group", "4", "--ranks", "2", "4", "--window", "16", "--calib-tokens", "64",
          "--out", str(out)])
    data = json.loads(out.read_text())
    quantized = ["k2", "k2+headq2", "k2+headq4", "kv2", "kv2+headq2+a2"]
    assert [r["name"] for r in data["runs"]] == ["dense", *quantized] and list(data["heads"]) == quantized
    dense = [float(a["correct"]) for a in data["answers"] if a["run"] == "dense"]
    assert len(data["prompts"]) == 2 and data["accuracy"]["dense"] == [dense]
    report = out.with_suffix(".md").read_text()
    assert "| kv2+headq2+a2 |" in report and "Which heads lose the needle" in report and "python" in report


def test_head_finding_matches_a_direct_computation():
    doc = retrieval_document()
    found = head_finding(doc)["k2"]
    rows = [h for h in doc["heads"] if h["run"] == "k2"]
    lost = np.zeros((4, 6))
    for h in rows:
        lost[h["layer"], h["head"]] += h["needle_mass_lost"] / 12  # 12 prompts
    worst = found["top_heads"][0]
    assert (worst["layer"], worst["head"]) == np.unravel_index(lost.argmax(), lost.shape)
    assert found["top_heads"][0]["needle_mass_lost"] == pytest.approx(lost.max())
    top5 = np.sort(lost, axis=None)[::-1][:5].sum() / lost.sum()
    assert found["top_share_of_loss"] == pytest.approx(top5)
    answers = {a["prompt"]: a["correct"] for a in doc["retrieval"]["answers"] if a["run"] == "k2"}
    per_prompt = {p: sum(max(h["needle_mass_lost"], 0) for h in rows if h["prompt"] == p) for p in answers}
    wrong = [v for p, v in per_prompt.items() if not answers[p]]
    assert found["loss_summed_over_heads_when_wrong"] == pytest.approx(np.mean(wrong))
