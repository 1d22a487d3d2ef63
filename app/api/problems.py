"""The error answers of the REST API (every 4xx/5xx body) and their OpenAPI entries."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class Problem(BaseModel):
    """Every error answer: what went wrong, in words."""

    detail: str


class FieldProblem(BaseModel):
    """One invalid field: its dotted path (``runs.0.key.bits``) and why."""

    field: str
    message: str


class ValidationProblem(Problem):
    """A 422 answer: ``detail`` names every field, ``errors`` lists them one by one."""

    errors: list[FieldProblem]


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error status codes."""
    words = {400: "body could not be parsed, Host is not a name of this server, or a tokenless "
                  "server's write lacks 'Content-Type: application/json'",
             401: "missing or wrong bearer token", 404: "unknown job id", 409: "wrong state or conflict",
             413: "request body too large", 422: "invalid input (the fields are named)",
             503: "executor or broker unavailable"}
    return {code: {"model": ValidationProblem if code == 422 else Problem, "description": words[code]}
            for code in codes}
