"""Property-based fuzzing of the whole API from its own OpenAPI schema (schemathesis, in-process
ASGI, SQLite in a temporary folder), on a server without a token and on one with a token that the
requests carry: whatever the generated request, no 5xx, every answer conforms to the schema, and
schema-violating requests are rejected. Every schema-valid request is accepted too, except the bodies
of ``POST /jobs`` and ``POST /results/import``: a spec has rules JSON Schema does not express (an
evaluation needs runs, ``max_tokens >= window``, no NUL in any text, a ``calibration_job`` that exists).
Requests to the server without a token say ``Content-Type: application/json``, as its writes require
(app/api/security.py), also where there is no body (``POST /jobs/{id}/cancel``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from app.main import create_app

from .conftest import make_settings

TOKEN = "fuzz-token"
SPEC_BODIES = {("POST", "/api/v1/jobs"), ("POST", "/api/v1/results/import")}


def _schema(**overrides: object) -> schemathesis.BaseSchema:
    database = Path(tempfile.mkdtemp(prefix="headq-fuzz-")) / "headq.db"
    app = create_app(make_settings(f"sqlite:///{database}", **overrides))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


open_schema = _schema()
token_schema = _schema(api_token=TOKEN)


def _check(case: schemathesis.Case, headers: dict[str, str]) -> None:
    spec_body = (case.operation.method.upper(), case.operation.path) in SPEC_BODIES
    case.call_and_validate(headers=headers,
                           excluded_checks=[checks.positive_data_acceptance] if spec_body else [])


@open_schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_without_token_conforms_and_never_fails(case: schemathesis.Case) -> None:
    _check(case, {"Content-Type": "application/json"})


@token_schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_with_token_conforms_and_never_fails(case: schemathesis.Case) -> None:
    _check(case, {"Authorization": f"Bearer {TOKEN}"})
