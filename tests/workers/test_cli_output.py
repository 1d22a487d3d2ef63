"""``headq eval`` / ``headq demo`` without a model: the flags' spec, the closing results table with
effective bits, the window n/N and ETA progress text, ``--help`` (defaults, preset contents) and run
names shared by the presets and the demo."""

from __future__ import annotations

from typing import Any

import pytest

from headq_cli import core
from headq_cli.demo import DEMO_RUNS, retrieval_spec
from headq_cli.main import main
from headq_cli.presets import preset_runs
from headq_cli.progress import WindowProgress
from headq_cli.table import results_table
from headq_spec.jobs import JobSpec

DOC = {"dataset": {"windows": 8, "tokens_scored": 8000}, "runs": [
    {"name": "dense", "perplexity": 21.5, "perplexity_ci": [20.1, 23.0], "effective_bits": {"key": 16.0,
                                                                                            "value": 16.0}},
    {"name": "k2+headq8", "perplexity": 23.021, "perplexity_ci": [20.909, 25.377],
     "excess_perplexity": 0.757, "excess_perplexity_ci": [0.598, 0.969], "excess_removed": 0.739,
     "excess_removed_ci": [0.686, 0.79], "effective_bits": {"key": 4.25, "value": 16.0}},
    {"name": "old import", "perplexity": 30.0}]}


def test_results_table_has_intervals_and_effective_bits() -> None:
    lines = results_table(DOC).splitlines()
    assert lines[0].split()[:2] == ["run", "perplexity"] and "K bits" in lines[0] and "V bits" in lines[0]
    assert lines[3].split() == ["k2+headq8", "23.021", "[20.909,", "25.377]", "+0.757", "[+0.598,",
                                "+0.969]", "73.9%", "[68.6%,", "79.0%]", "4.25", "16.00"]
    assert lines[4].split() == ["old", "import", "30.000", "-", "-", "-", "-"]


def test_eval_flags_reach_the_spec_and_it_ends_with_the_table(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from headq_core.evaluation.calibrate import Calibration

    class Saved:
        def to_bytes(self) -> bytes:
            return b"calibration"

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(core, "_run", lambda spec, blob: (seen.append(spec), (DOC, None))[1])
    monkeypatch.setattr(Calibration, "load", staticmethod(lambda path: Saved()))
    assert main(["eval", "--model", "m", "--runs", "full-kv", "--bits", "2", "--value-bits", "4",
                 "--source", "hf", "--dataset", "wikitext", "--split", "test", "--head-windows", "2",
                 "--calibration", "cal"]) == 0
    dataset, runs = seen[0]["dataset"], seen[0]["runs"]
    assert (dataset["source"], dataset["name"], dataset["split"], dataset["head_windows"]) == (
        "hf", "wikitext", "test", 2)
    assert [r["name"] for r in runs] == ["dense", "k2v4", "k2v4+headq8", "k2v4+a2", "k2v4+headq8+a2"]
    assert {r["value"]["bits"] for r in runs[1:]} == {4} and {r["key"]["bits"] for r in runs[1:]} == {2}
    assert capsys.readouterr().out.splitlines()[-4:] == results_table(DOC).splitlines()[-4:]


def test_progress_shows_window_n_of_n_and_an_eta() -> None:
    now = [100.0]
    meter = WindowProgress(runs=2, batch=1, clock=lambda: now[0])
    assert meter.text(0.0, "load model") == "load model"
    assert meter.text(1 / 8, "evaluate k2") == "evaluate k2  window 1/4"
    now[0] += 10.0
    assert meter.text(3 / 8, "evaluate k2") == "evaluate k2  window 2/4  ETA 0:25"
    now[0] += 25.0
    assert meter.text(1.0, "evaluate dense") == "evaluate dense  window 4/4  ETA 0:00"
    calibration = WindowProgress(clock=lambda: now[0])
    assert calibration.text(1 / 16, "calibrate") == "calibrate  window 1/16"


def test_help_shows_defaults_and_each_preset(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: 2)", "(default: headq)", "(default: 1024)", "--value-bits", "--head-windows",
                  "--split", "--source", "headq dense, k{B}, k{B}+headq{R}", "full-kv dense, kv{B}"):
        assert shown in text, shown
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "(default: 8192)" in capsys.readouterr().out


def test_the_demo_and_the_presets_name_runs_alike() -> None:
    presets = {r["name"]: r for p in ("controls", "full-kv") for r in preset_runs(p, 2, 32, 0, 8)}
    for run in DEMO_RUNS:
        if run["name"] in presets:
            assert {k for k in run if k != "name"} == {k for k in presets[run["name"]] if k != "name"}
    names = {r["name"] for r in DEMO_RUNS}
    assert {"dense", "k2", "k2+headq8", "k2+headq8 wrong sign", "kv2", "kv2+a2", "kv2+headq8+a2"} == names
    assert names - set(presets) == set()


def test_the_demo_retrieval_job_is_a_valid_spec_of_its_runs() -> None:
    """The demo's needle-in-a-haystack job: dense, k2 and k2+HeadQ through the cache, needles at 0, 50
    and 100% of 1,024-token prompts (where the dense SmolLM2 finds them all), the demo's calibration."""
    spec = JobSpec.model_validate({**retrieval_spec([1024]), "calibration_job": "calibration-job"})
    assert spec.kind == "retrieval" and [r.name for r in spec.runs] == ["dense", "k2", "k2+headq8"]
    assert spec.retrieval is not None and spec.retrieval.lengths == [1024]
    assert spec.retrieval.depths == [0.0, 50.0, 100.0]
    with pytest.raises(ValueError, match="retrieval"):  # a length the built-in model cannot hold
        JobSpec.model_validate({**retrieval_spec([9000]), "calibration_job": "calibration-job"})
