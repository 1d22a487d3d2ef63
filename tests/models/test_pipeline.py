"""workers.pipeline.execute and the ``headq calibrate`` / ``headq eval`` commands on a tiny saved model."""

import csv
import json

import pytest

from headq_cli.main import main
from headq_core.errors import Cancelled
from headq_core.evaluation.calibrate import Calibration
from tests.models.tiny import save_tiny
from workers.pipeline import ModelCache, execute

K2 = {"bits": 2, "axis": "per_channel", "group_size": 4, "residual": 0}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny"
    save_tiny(folder, "llama")
    return folder


def _spec(model_dir, kind, **extra):
    return {
        "kind": kind,
        "model": {"id": str(model_dir), "device": "cpu"},
        "dataset": {"source": "builtin", "name": "sotu", "window": 16, "max_tokens": 32},
        **extra,
    }


def test_calibration_then_evaluation_reusing_the_model(model_dir):
    cache, stages = ModelCache(), []
    doc, blob = execute(
        _spec(model_dir, "calibration", calibration={"rank": 4}),
        calibration_blob=None,
        progress=lambda f, s: stages.append(s),
        model_cache=cache,
        allowed_model_dirs=[str(model_dir.parent)],
    )
    assert doc["kind"] == "calibration" and doc["rank"] == 4 and doc["dataset"]["split"] == "calibration"
    assert len(doc["arrays"]["query_spectrum"]) == 2 and "load model" in stages
    cal = Calibration.from_bytes(blob)
    first = cache.loaded
    runs = [{"name": "dense"}, {"name": "k2", "key": K2}, {"name": "k2_h", "key": K2, "headq": {"rank": 4}}]
    doc, artifact = execute(
        _spec(model_dir, "evaluation", runs=runs, calibration_job="job-1"),
        calibration_blob=blob,
        model_cache=cache,
    )
    assert cache.loaded is first and artifact is None
    assert [r["name"] for r in doc["runs"]] == ["dense", "k2", "k2_h"]
    assert doc["calibration"]["job_id"] == "job-1" and doc["calibration"]["tokens"] == cal.meta["tokens"]
    assert doc["dataset"]["split"] == "eval" and doc["runs"][2]["excess_removed"] is not None
    assert len(doc["heads"]) == 2 * 2 * 4  # two quantized runs x layers x heads


def test_the_specs_attention_path_and_sampled_rows_reach_the_evaluator(model_dir):
    """``dataset.attention`` / ``dataset.head_rows`` of the job spec choose the evaluator's path (they
    were ignored: every job ran the defaults)."""
    runs = [{"name": "k2", "key": K2}]
    dataset = {"source": "builtin", "name": "sotu", "window": 16, "max_tokens": 32}
    blockwise = {**dataset, "attention": "blockwise", "head_rows": 5}
    spec = {**_spec(model_dir, "evaluation", runs=runs), "dataset": blockwise}
    doc, _ = execute(spec, calibration_blob=None)
    attention = doc["dataset"]["attention"]
    assert attention["head_windows"] == "blockwise" and len(attention["head_rows"]) == 5
    assert attention["head_rows"][-1] == 15  # the last row is always sampled
    doc, _ = execute({**_spec(model_dir, "evaluation", runs=runs),
                      "dataset": {**dataset, "attention": "materialised"}}, calibration_blob=None)
    assert doc["dataset"]["attention"]["head_windows"] == "materialised"


def test_refusals(model_dir, tmp_path):
    with pytest.raises(ValueError, match="model.id: .* not in an allowed directory"):
        execute(_spec(model_dir, "calibration"), calibration_blob=None, allowed_model_dirs=[str(tmp_path)])
    outside = {"source": "files", "files": [str(model_dir / "*.json")], "window": 16, "max_tokens": 32}
    with pytest.raises(ValueError, match=r"dataset.files.0: .* not in an allowed directory"):
        # a Celery worker checks the files with its own settings, not only the API with the server's
        execute({**_spec(model_dir, "calibration"), "dataset": outside}, calibration_blob=None,
                allowed_data_dirs=[str(tmp_path / "data")])
    with pytest.raises(ValueError, match="dataset.name: .* not a hub dataset id"):
        execute({**_spec(model_dir, "calibration"), "dataset": {"source": "hf", "name": str(tmp_path)}},
                calibration_blob=None)
    with pytest.raises(ValueError, match="runs"):
        execute(_spec(model_dir, "evaluation"), calibration_blob=None)
    with pytest.raises(ValueError, match="trust_remote_code"):
        execute({**_spec(model_dir, "calibration"), "trust_remote_code": True}, calibration_blob=None)
    missing = {"source": "files", "files": [str(tmp_path / "absent.txt")], "window": 16, "max_tokens": 32}
    no_model = {**_spec(tmp_path / "no-such-model", "calibration"), "dataset": missing}
    with pytest.raises(ValueError, match=r"dataset.files: no such file: .*absent\.txt"):
        execute(no_model, calibration_blob=None)  # the files are checked before the model is loaded
    with pytest.raises(Cancelled):
        execute(
            _spec(model_dir, "evaluation", runs=[{"name": "dense"}]),
            calibration_blob=None,
            should_stop=lambda: True,
        )


def test_cli_calibrate_and_eval(model_dir, tmp_path, capsys):
    cal_dir, out, heads = tmp_path / "cal", tmp_path / "r.json", tmp_path / "h.csv"
    common = [
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--window",
        "16",
        "--max-tokens",
        "32",
        "--rank",
        "2",
    ]
    assert main(["calibrate", *common, "--save", str(cal_dir)]) == 0
    assert Calibration.load(cal_dir).rank == 2
    assert (
        main(
            [
                "eval",
                *common,
                "--bits",
                "2",
                "--group",
                "4",
                "--runs",
                "controls",
                "--calibration",
                str(cal_dir),
                "--out",
                str(out),
                "--csv",
                str(heads),
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert [r["name"] for r in doc["runs"]] == [
        "dense",
        "k2",
        "k2+headq2",
        "k2+headq2 wrong sign",
        "k2+headq2 random",
        "k2+headq2 key_pca",
    ]
    rows = list(csv.DictReader(heads.open()))
    assert len(rows) == len(doc["heads"]) == 5 * 2 * 4
    assert "k2+headq2" in capsys.readouterr().out
    assert main(["eval", *common, "--runs", "headq"]) == 2  # HeadQ needs --calibration
    assert "calibration" in capsys.readouterr().err

