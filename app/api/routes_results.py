"""Results: read a job's results document (JSON, or its head rows as CSV / Parquet) and import
finished documents or bundles as succeeded jobs. FastAPI only parses an import's JSON; it is checked
in the route's worker thread (``app.api.imports``), never on the event loop."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response
from pydantic import SkipValidation

from app.api.deps import SessionDep, WriteAccess
from app.api.imports import ImportPayload, prepare_import
from app.api.problems import problems
from app.api.tables import frame_of, to_csv, to_parquet
from headq_jobs import store
from headq_jobs.store.jobs import resolve_job_id
from headq_spec.api import Job, JobItems

router = APIRouter(tags=["results"], responses=problems(400, 413, 422))


@router.get("/jobs/{job_id}/results", responses={
    200: {"content": {"application/json": {}, "text/csv": {}, "application/vnd.apache.parquet": {}},
          "description": "the results document, or its head or run rows as CSV / Parquet"},
    **problems(404, 409)})
def get_results(job_id: str, session: SessionDep,
                format: Annotated[Literal["json", "csv", "parquet"], Query()] = "json",
                table: Annotated[Literal["heads", "runs"], Query()] = "heads") -> Any:
    """The results document of the latest successful attempt; ``format=csv|parquet`` for its head
    rows, or with ``table=runs`` its run rows (each aggregate with SE and 95% interval). ``job_id``
    may be a unique prefix, as in ``GET /jobs/{job_id}``."""
    job_id = resolve_job_id(session, job_id)
    document = store.load_results(session, job_id)
    name = job_id if table == "heads" else f"{job_id}-runs"
    if format == "csv":
        return Response(to_csv(frame_of(document, table)), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
    if format == "parquet":
        return Response(to_parquet(frame_of(document, table)), media_type="application/vnd.apache.parquet",
                        headers={"Content-Disposition": f'attachment; filename="{name}.parquet"'})
    return document


@router.post("/results/import", status_code=201, response_model=JobItems, dependencies=[WriteAccess],
             responses=problems(401))
def import_results(payload: Annotated[SkipValidation[ImportPayload], Body()],
                   session: SessionDep) -> JobItems:
    """Store finished results documents as succeeded jobs (one document, or a bundle of several);
    a calibration may bring its artifact, which must be one the workers can read."""
    jobs = store.import_documents(session, prepare_import(payload))
    return JobItems(items=[Job.model_validate(job) for job in jobs])
