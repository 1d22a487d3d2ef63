"""The formats study at a tiny size: every run evaluated, the summary taken from the results rows,
the frontier a Pareto frontier (checked directly), and the Markdown written from the document."""

import json

from headq_core.method.budget import effective_bits
from studies.formats import format_runs, markdown, run_study
from tests.models.tiny import loaded


def test_formats_study_smoke():
    lm = loaded("llama", head_dim=32)
    out = run_study(lm, window=32, windows=2, head_windows=1, calib_tokens=64, group=8, rank=4)
    runs = format_runs(8, 4)
    names = [r.name for r in runs]
    assert [r["run"] for r in out["summary"]] == names
    assert {"dense", "fp8_e4m3", "fp8_e5m2", "q8_0", "q4_0", "q4_1", "kivi2", "kivi3", "kivi4",
            "hadamard+kivi2", "hadamard+kivi3", "q4_0+headq4", "hadamard+kivi2+headq4"} <= set(names)
    by_name = {r["run"]: r for r in out["summary"]}
    for run in runs:
        row = by_name[run.name]
        assert row["key_bits"] == effective_bits(run.key, 32, run.headq)
        assert row["value_bits"] == effective_bits(run.value, 32)
        assert (row["excess_removed"] is not None) == (run.headq is not None)
        assert (row["rho_fisher"] is None) == run.is_dense  # every quantized run ranks its heads
    assert by_name["q4_0"]["key"] == "q4_0" and by_name["q4_0"]["kv_bits"] == 4.5
    assert by_name["fp8_e4m3"]["kv_bits"] == 8.0
    assert by_name["hadamard+kivi2"]["key"] == "int2 per_channel G8 + hadamard"
    points = {r["run"]: (r["kv_bits"], r["excess_perplexity"]) for r in out["summary"]}
    dominated = {n for n, (b, e) in points.items()
                 if any((ob <= b and oe < e) or (ob < b and oe <= e) for ob, oe in points.values())}
    assert set(out["frontier"]) == set(points) - dominated
    doc = json.loads(json.dumps({"command": "python -m studies.formats", "date": "2026-12-06",
                                 "commit": "0" * 40, "host": "h"} | out))
    text = markdown(doc)
    assert all(f"| {name} |" in text for name in names)
    assert "Frontier" in text and "q4_0" in text
