"""The ``headq`` command line against a real ``headq serve`` process (SQLite, no executor):
submit a YAML spec, status, cancel, results in json / csv / parquet (by full or 8-character id),
API errors (an ambiguous short id), field paths of type errors, and the serve address guard."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from app.client import HeadQClient
from headq_cli.main import main
from headq_jobs.store import create_job, make_engine, make_session_factory, session_scope
from tests.app.resultgen import make_document


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The SQLite database URL of :func:`server`."""
    return f"sqlite:///{tmp_path_factory.mktemp('serve-db')}/headq.db"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, server_database: str) -> Iterator[str]:
    """``headq serve`` on a free port with a SQLite database and no executor (jobs stay queued)."""
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {**os.environ, "HEADQ_DATABASE_URL": server_database, "HEADQ_EXECUTOR": "none",
           "HEADQ_DASHBOARD": "false"}
    env.pop("HEADQ_API_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "headq_cli.main", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "serve.log", "wb"))  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    with HeadQClient(url) as api:
        while True:
            try:
                if api.health():
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp / "serve.log").read_text()) from None
                time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_serve_refuses_a_public_address_without_a_token(capsys, monkeypatch) -> None:
    monkeypatch.delenv("HEADQ_API_TOKEN", raising=False)
    monkeypatch.delenv("HEADQ_ALLOW_REMOTE_WITHOUT_TOKEN", raising=False)
    code, _, err = run_cli(capsys, "serve", "--host", "0.0.0.0", "--executor", "none")
    assert code == 2 and "host" in err and "HEADQ_API_TOKEN" in err


def test_submit_status_cancel_round_trip(server: str, tmp_path: Path, capsys) -> None:
    spec = {"kind": "calibration", "model": {"id": "builtin:smollm2-135m"},
            "dataset": {"window": 64, "max_tokens": 512}, "label": "cli test"}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    code, out, _ = run_cli(capsys, "submit", str(path), "--url", server)
    job = json.loads(out)
    assert code == 0 and job["status"] == "queued" and job["label"] == "cli test"
    assert job["spec"]["dataset"]["max_tokens"] == 512

    code, out, _ = run_cli(capsys, "status", job["id"], "--url", server)
    assert code == 0 and json.loads(out)["id"] == job["id"]
    code, out, _ = run_cli(capsys, "cancel", job["id"], "--url", server)
    assert code == 0 and json.loads(out)["status"] == "cancelled"
    code, _, err = run_cli(capsys, "results", job["id"], "--url", server)
    assert code == 1 and "409" in err


def test_submit_reports_the_servers_validation_message(server: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"kind": "evaluation", "model": {"id": "builtin:smollm2-135m"},
                                "runs": [{"name": "k9", "key": {"bits": 9}}]}))
    code, _, err = run_cli(capsys, "submit", str(path), "--url", server)
    assert code == 1 and "422" in err and "bits" in err


def test_bad_spec_file_and_unknown_job(server: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    code, _, err = run_cli(capsys, "submit", str(path), "--url", server)
    assert code == 2 and "spec" in err and "mapping" in err
    code, _, err = run_cli(capsys, "status", "no-such-job", "--url", server)
    assert code == 1 and "404" in err


def test_unreachable_server_is_a_message(capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run_cli(capsys, "status", "x", "--url", f"http://127.0.0.1:{port}")
    assert code == 1 and "cannot reach" in err


def test_results_in_every_format_match_the_document(server: str, tmp_path: Path, capsys) -> None:
    document = make_document(seed=3)
    with HeadQClient(server) as api:
        (job,) = api.import_results(document)
    code, _, _ = run_cli(capsys, "results", job.id, "--url", server, "--out", str(tmp_path / "r.json"))
    assert code == 0
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["runs"] == document["runs"] and back["heads"] == document["heads"]

    code, out, _ = run_cli(capsys, "results", job.id, "--url", server, "--format", "csv")
    table = pd.read_csv(io.StringIO(out))
    expected = pd.DataFrame(document["heads"])
    assert len(table) == len(expected)
    assert table["attn_kl"].tolist() == pytest.approx(expected["attn_kl"].tolist(), rel=1e-12)

    code, _, err = run_cli(capsys, "results", job.id, "--url", server, "--format", "parquet")
    assert code == 2 and "--out" in err
    code, _, _ = run_cli(capsys, "results", job.id, "--url", server, "--format", "parquet",
                         "--out", str(tmp_path / "h.parquet"))
    table = pd.read_parquet(tmp_path / "h.parquet")
    assert code == 0 and table["fisher"].tolist() == pytest.approx(expected["fisher"].tolist(), rel=1e-12)
    keys = ["run", "layer", "head"]
    assert table[keys].values.tolist() == expected[keys].values.tolist()


def test_import_a_gzipped_bundle_in_parts(server: str, tmp_path: Path, capsys) -> None:
    import gzip

    documents = [make_document(seed=s) for s in (4, 5, 6)]
    bundle = {"jobs": [{"results": d} for d in documents]}
    path = tmp_path / "bundle.json.gz"
    path.write_bytes(gzip.compress(json.dumps(bundle).encode()))
    one_job = len(json.dumps(bundle["jobs"][0]))
    code, out, err = run_cli(capsys, "import", str(path), "--url", server, "--max-bytes", str(one_job + 1))
    assert code == 0 and err.count("imported") == 3
    ids = [line.split()[0] for line in out.splitlines()]
    with HeadQClient(server) as api:
        for job_id, document in zip(ids, documents, strict=True):
            assert api.results(job_id)["heads"] == document["heads"]
    (tmp_path / "bad.json").write_text("[1, 2]")
    code, _, err = run_cli(capsys, "import", str(tmp_path / "bad.json"), "--url", server)
    assert code == 2 and "bundle object" in err


def test_invalid_local_spec_is_one_line_naming_each_field(tmp_path: Path, capsys) -> None:
    """``headq eval --spec`` validates before loading anything: one line per CLI error, the dotted
    path and the message (no pydantic boilerplate)."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"kind": "evaluation", "model": {"id": "builtin:smollm2-135m"},
                                    "dataset": {"window": 64, "max_tokens": 8},
                                    "runs": [{"name": "k9", "key": {"bits": 9}}]}))
    code, _, err = run_cli(capsys, "eval", "--spec", str(path))
    assert code == 2
    assert err.strip().splitlines() == [
        "headq: dataset.max_tokens: must be >= window (64), got 8; "
        "runs.0.key.bits: must be one of (1, 2, 3, 4, 8), got 9"]


def test_short_ids_reach_the_job(server: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"kind": "calibration", "model": {"id": "builtin:smollm2-135m"}}))
    job = json.loads(run_cli(capsys, "submit", str(path), "--url", server)[1])
    code, out, _ = run_cli(capsys, "status", job["id"][:8], "--url", server)
    assert code == 0 and json.loads(out)["id"] == job["id"]
    code, out, _ = run_cli(capsys, "cancel", job["id"][:8], "--url", server)
    assert code == 0 and json.loads(out)["status"] == "cancelled"
    with HeadQClient(server) as api:
        (done,) = api.import_results(make_document(seed=7))
    code, out, _ = run_cli(capsys, "results", done.id[:8], "--url", server, "--format", "csv")
    assert code == 0 and out.startswith("run,layer,head")


def test_an_ambiguous_short_id_is_a_message_naming_the_matches(server: str, server_database: str,
                                                                monkeypatch, capsys) -> None:
    """Two jobs share their first 8 characters (written to the server's database directly, with
    chosen ids): each command exits 1 with the API's 409 message naming both, and prints no JSON."""
    twins = ("5ca1ab1e-0000-4000-8000-000000000001", "5ca1ab1e-1111-4000-8000-000000000002")
    ids = iter(uuid.UUID(twin) for twin in twins)
    monkeypatch.setattr(uuid, "uuid4", lambda: next(ids))
    with session_scope(make_session_factory(make_engine(server_database))) as session:
        for _ in twins:
            create_job(session, kind="calibration", spec={"kind": "calibration"}, model_id="m")
    for command in ("status", "cancel", "results"):
        code, out, err = run_cli(capsys, command, "5ca1ab1e", "--url", server)
        assert code == 1 and out == "", (command, out)
        assert "HTTP 409" in err and all(twin in err for twin in twins), (command, err)


def test_a_type_error_names_the_full_field_path(server: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"kind": "evaluation", "model": {"id": "builtin:smollm2-135m"},
                                    "runs": [{"name": "k2", "key": {"bits": "two"}}]}))
    code, _, err = run_cli(capsys, "eval", "--spec", str(path))
    assert code == 2 and err.startswith("headq: runs.0.key.bits: ")
    code, _, err = run_cli(capsys, "submit", str(path), "--url", server)
    assert code == 1 and "422" in err and "runs.0.key.bits" in err
