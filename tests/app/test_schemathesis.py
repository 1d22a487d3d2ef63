"""Property-based fuzzing of the whole API from its own OpenAPI schema (schemathesis, in-process
ASGI, SQLite in a temporary folder): whatever the generated request, no 5xx, every answer conforms
to the schema, and schema-violating requests are rejected. (Not checked: that every schema-valid
request is accepted: a spec has cross-field rules, such as "an evaluation needs runs", that JSON
Schema does not express.)"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from app.main import create_app

from .conftest import make_settings

_DB = Path(tempfile.mkdtemp(prefix="headq-fuzz-")) / "headq.db"
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(make_settings(f"sqlite:///{_DB}")))


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_and_never_fails(case: schemathesis.Case) -> None:
    case.call_and_validate(excluded_checks=[checks.positive_data_acceptance])
