"""Validation errors as people read them: each field by its dotted path (``runs.0.key.bits``) with
the message, shared by the REST API (422 bodies) and the CLI (one line on stderr). Text UTF-8 cannot
encode (a lone surrogate in a refused key or value) is shown escaped, so every answer can be sent."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

_FIELD_PREFIX = re.compile(r"^(?:Value error, )?((?:\d+\.)*[A-Za-z_][\w.\\]*): (.*)$", re.S)
_LOCATION_ROOTS = ("body", "query", "path", "header")
_UNION_TAGS = ("document", "bundle")  # the tags of the import endpoint's union body


def field_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """``[{"field": "runs.0.key.bits", "message": "..."}]`` from pydantic-style errors.

    The field a dataclass ``__post_init__`` names in its message (``"bits: must be ..."``, or a path
    below the location such as ``"0.key.bits: ..."``) is appended to the location, so the path
    reaches the offending field.
    """
    out = []
    for error in errors:
        loc = [readable(str(part)) for part in error.get("loc", ())]
        if error.get("type") == "json_invalid":  # the location is a character offset
            position = (error.get("ctx") or {}).get("error", "invalid JSON")
            out.append({"field": "body", "message": f"invalid JSON ({position}) at character {loc[-1]}"})
            continue
        if loc and loc[0] in _LOCATION_ROOTS:
            loc = loc[1:]
        loc = [part for part in loc if part not in _UNION_TAGS]
        message = readable(str(error.get("msg", "invalid")))
        match = _FIELD_PREFIX.match(message)
        if match:
            named, message = match.groups()
            if not loc or loc[-1] != named.split(".")[0]:
                loc.append(named)
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        out.append({"field": ".".join(loc) or "body", "message": message})
    return out


def readable(text: str) -> str:
    """``text`` with each character UTF-8 cannot encode written as an escape (``\\ud83d``)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(errors: Iterable[Mapping[str, str]]) -> str:
    """``field: message; field: message`` of :func:`field_errors` rows."""
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)


def describe(exc: ValidationError) -> str:
    """A pydantic validation error as one line (:func:`one_line`)."""
    return one_line(field_errors(exc.errors()))
