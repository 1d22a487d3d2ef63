"""``HeadQClient`` against a real uvicorn server (HTTP over a socket) running ``create_app``: every
method, its models, and errors raised with the API's own message."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest
import uvicorn
from sqlalchemy import Engine

from app.client import HeadQAPIError, HeadQClient
from app.main import create_app
from headq_spec.jobs import JobSpec

from .conftest import EVAL_SPEC, make_settings
from .resultgen import make_document


@pytest.fixture
def server(clean_engine: Engine, database_url: str) -> Iterator[str]:
    """The URL of a live server (token ``tok``) on a free local port."""
    app = create_app(make_settings(database_url, api_token="tok"))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_client_round_trip(server: str) -> None:
    with HeadQClient(server, token="tok") as api:
        assert api.health() and api.ready() == (True, None)
        job = api.submit(JobSpec.model_validate(EVAL_SPEC), idempotency_key="one")
        assert api.submit(EVAL_SPEC, idempotency_key="one").id == job.id
        assert api.get(job.id).status == "queued"
        page = api.list(status="queued", kind="evaluation", model="org/model", limit=10)
        assert page.total == 1 and [j.id for j in page.items] == [job.id]
        assert api.cancel(job.id).status == "cancelled"

        doc = make_document(seed=21)
        cal_doc = make_document(kind="calibration", seed=22)
        imported = api.import_results({"jobs": [{"results": doc}, {"results": cal_doc}]})
        assert [j.kind for j in imported] == ["evaluation", "calibration"]
        assert api.results(imported[0].id) == doc
        csv_text = api.results(imported[0].id, "csv")
        assert isinstance(csv_text, bytes) and csv_text.count(b"\n") == len(doc["heads"]) + 1
        table = pq.read_table(io.BytesIO(api.results(imported[0].id, "parquet")))
        assert table.num_rows == len(doc["heads"])
        assert [j.id for j in api.calibrations()] == [imported[1].id]
        assert api.calibrations(model="nobody/else") == []


def test_client_errors_carry_the_api_message(server: str) -> None:
    with HeadQClient(server + "/api/v1/", token="tok") as api:
        with pytest.raises(HeadQAPIError) as missing:
            api.get("nope")
        assert missing.value.status_code == 404 and "nope" in missing.value.detail
        with pytest.raises(HeadQAPIError) as invalid:
            api.submit({**EVAL_SPEC, "seed": -5})
        assert invalid.value.status_code == 422 and invalid.value.detail.startswith("seed:")
    with HeadQClient(server) as anonymous, pytest.raises(HeadQAPIError) as denied:
        anonymous.submit(EVAL_SPEC)
    assert denied.value.status_code == 401
