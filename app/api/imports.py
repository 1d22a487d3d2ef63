"""An import body (one results document or a bundle), checked in a worker thread and in slices.

Every document is validated without its head rows, then the rows :data:`HEAD_SLICE` at a time, so
the event loop's thread gets the GIL between slices and the only copy of the rows kept is the parsed
JSON the store writes. A calibration artifact must be what ``headq_spec.artifact`` reads, for the
model and rank its document describes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi.exceptions import RequestValidationError
from pydantic import Discriminator, Tag, TypeAdapter, ValidationError

from headq_jobs.store.results import ImportItem
from headq_spec.artifact import Geometry, read_artifact
from headq_spec.results import Bundle, BundleItem, HeadRowIn, ResultsDocument

HEAD_SLICE = 1000


def _payload_kind(value: Any) -> str:
    return "bundle" if isinstance(value, dict) and "jobs" in value else "document"


ImportPayload = Annotated[Annotated[ResultsDocument, Tag("document")] | Annotated[Bundle, Tag("bundle")],
                          Discriminator(_payload_kind)]
_PAYLOAD: TypeAdapter[ResultsDocument | Bundle] = TypeAdapter(ImportPayload)
_HEADS: TypeAdapter[list[Any]] = TypeAdapter(list[HeadRowIn])
Location = tuple[str | int, ...]


def prepare_import(payload: Any) -> list[ImportItem]:
    """``(document, spec, label, artifact bytes)`` of each job in the parsed JSON ``payload``. A
    refusal names its field: ``RequestValidationError`` for the schema, ``ValueError`` for the rest."""
    rows = _take_heads(payload)
    try:
        parsed = _PAYLOAD.validate_python(payload)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    for where, heads in rows.items():
        _check_heads(where, heads)
    if isinstance(parsed, ResultsDocument):
        return [_prepared(BundleItem(results=parsed), 0, rows.get(()))]
    return [_prepared(item, index, rows.get(("jobs", index, "results")))
            for index, item in enumerate(parsed.jobs)]


def _take_heads(payload: Any) -> dict[Location, list[Any]]:
    """Take each document's ``heads`` list out of ``payload`` (leaving ``[]``), by document location."""
    documents: list[tuple[Location, Any]] = [((), payload)]
    if _payload_kind(payload) == "bundle" and isinstance(payload["jobs"], list):
        documents = [(("jobs", i, "results"), item.get("results")) for i, item in enumerate(payload["jobs"])
                     if isinstance(item, dict)]
    taken = {}
    for where, document in documents:
        if isinstance(document, dict) and isinstance(document.get("heads"), list):
            taken[where], document["heads"] = document["heads"], []
    return taken


def _check_heads(where: Location, heads: list[Any]) -> None:
    """Validate ``heads`` a slice at a time; errors are located at ``where`` + ``heads.<index>``."""
    for start in range(0, len(heads), HEAD_SLICE):
        rows = heads[start:start + HEAD_SLICE]
        try:
            _HEADS.validate_python(rows)
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": _row_location(where, start, e["loc"])}
                                          for e in exc.errors()]) from exc


def _row_location(where: Location, start: int, loc: Sequence[str | int]) -> Location:
    """``loc`` inside a slice of rows from ``start``, as a location in the whole payload."""
    return (*where, "heads", start + int(loc[0]), *loc[1:])


def _prepared(item: BundleItem, index: int, heads: list[Any] | None) -> ImportItem:
    document = item.results.model_dump(mode="json", exclude_unset=True)
    if heads is not None:
        document["heads"] = heads
    spec = item.spec.model_dump(mode="json") if item.spec else _spec_from_document(document)
    if item.spec and (item.spec.kind, item.spec.model.id) != (document["kind"], document["model"]["id"]):
        raise ValueError(f"jobs.{index}.spec: kind and model.id must match the results document")
    label = spec.get("label") or document.get("label")
    return document, spec, label, _artifact(item, document, f"jobs.{index}.artifact_base64")


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


def _artifact(item: BundleItem, document: dict[str, Any], field: str) -> bytes | None:
    """The artifact bytes, checked as the workers will read them and against the document."""
    if item.artifact_base64 is None:
        return None
    if document["kind"] != "calibration":
        raise ValueError(f"{field}: only a calibration has an artifact")
    try:
        blob = base64.b64decode(item.artifact_base64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{field}: not valid base64") from exc
    try:
        _, _, geometry = read_artifact(blob)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from exc
    _check_geometry(geometry, document, field)
    return blob


def _check_geometry(geometry: Geometry, document: dict[str, Any], field: str) -> None:
    """The artifact's tensors must fit the model and rank the document states (where it states them)."""
    model = document["model"]
    stated = {"layers": model.get("layers"), "kv_heads": model.get("kv_heads"),
              "head_dim": model.get("head_dim"), "rank": document.get("rank")}
    for name, value in stated.items():
        if value is not None and value != getattr(geometry, name):
            raise ValueError(f"{field}: the artifact has {name} {getattr(geometry, name)}, "
                             f"the document {value!r}")
