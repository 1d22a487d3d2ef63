"""Results: read a job's results document (JSON, or its head rows as CSV / Parquet) and import
finished documents or bundles as succeeded jobs."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response
from pydantic import Discriminator, Tag

from app.api.deps import SessionDep, WriteAccess
from app.api.problems import problems
from app.api.tables import frame_of, to_csv, to_parquet
from headq_jobs import store
from headq_spec.api import Job, JobItems
from headq_spec.results import Bundle, BundleItem, ResultsDocument

router = APIRouter(tags=["results"], responses=problems(400, 413, 422))


def _payload_kind(value: Any) -> str:
    return "bundle" if isinstance(value, dict) and "jobs" in value else "document"


ImportPayload = Annotated[Annotated[ResultsDocument, Tag("document")] | Annotated[Bundle, Tag("bundle")],
                          Discriminator(_payload_kind)]


@router.get("/jobs/{job_id}/results", responses={
    200: {"content": {"application/json": {}, "text/csv": {}, "application/vnd.apache.parquet": {}},
          "description": "the results document, or its head or run rows as CSV / Parquet"},
    **problems(404, 409)})
def get_results(job_id: str, session: SessionDep,
                format: Annotated[Literal["json", "csv", "parquet"], Query()] = "json",
                table: Annotated[Literal["heads", "runs"], Query()] = "heads") -> Any:
    """The results document of the latest successful attempt; ``format=csv|parquet`` for its head
    rows, or with ``table=runs`` its run rows (each aggregate with SE and 95% interval)."""
    document = store.load_results(session, job_id)
    name = job_id if table == "heads" else f"{job_id}-runs"
    if format == "csv":
        return Response(to_csv(frame_of(document, table)), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
    if format == "parquet":
        return Response(to_parquet(frame_of(document, table)), media_type="application/vnd.apache.parquet",
                        headers={"Content-Disposition": f'attachment; filename="{name}.parquet"'})
    return document


def _spec_from_document(doc: dict[str, Any]) -> dict[str, Any]:
    """A job spec describing an imported document whose original spec was not sent."""
    calibration = doc.get("calibration")
    calibration = calibration if isinstance(calibration, dict) else {}
    model = doc["model"]
    return {"kind": doc["kind"], "label": doc.get("label"),
            "model": {"id": model["id"], "revision": model.get("revision")},
            "dataset": doc.get("dataset"), "calibration_job": calibration.get("job_id"),
            "runs": [run["spec"] for run in doc.get("runs", []) if isinstance(run.get("spec"), dict)],
            "seed": doc.get("seed", 0)}


def _artifact(item: BundleItem, index: int) -> bytes | None:
    if item.artifact_base64 is None:
        return None
    try:
        return base64.b64decode(item.artifact_base64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"jobs.{index}.artifact_base64: not valid base64") from exc


@router.post("/results/import", status_code=201, response_model=JobItems, dependencies=[WriteAccess],
             responses=problems(401))
def import_results(payload: Annotated[ImportPayload, Body()], session: SessionDep) -> JobItems:
    """Store finished results documents as succeeded jobs (one document, or a bundle of several)."""
    items = payload.jobs if isinstance(payload, Bundle) else [BundleItem(results=payload)]
    prepared = []
    for index, item in enumerate(items):
        document = item.results.model_dump(mode="json", exclude_unset=True)
        spec = item.spec.model_dump(mode="json") if item.spec else _spec_from_document(document)
        described = (document["kind"], document["model"]["id"])
        if item.spec and (item.spec.kind, item.spec.model.id) != described:
            raise ValueError(f"jobs.{index}.spec: kind and model.id must match the results document")
        label = spec.get("label") or document.get("label")
        prepared.append((document, spec, label, _artifact(item, index)))
    jobs = store.import_documents(session, prepared)
    return JobItems(items=[Job.model_validate(job) for job in jobs])
