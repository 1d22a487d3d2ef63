"""The importable results bundle (``bundle.json.gz``; ``headq import`` loads it into ``headq serve``)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from typing import Any


def make_bundle(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"jobs": [{spec, results, artifact_base64}]}`` (headq_spec.api.Bundle), calibrations first."""
    ordered = sorted(items, key=lambda i: i["results"].get("kind") != "calibration")
    return {
        "jobs": [
            {"spec": i["spec"], "results": i["results"], "artifact_base64": i.get("artifact_base64")}
            for i in ordered
        ]
    }


def bundle_bytes(items: Sequence[dict[str, Any]]) -> bytes:
    """The bundle as gzipped JSON, byte-identical for the same items (gzip mtime 0)."""
    return gzip.compress(json.dumps(make_bundle(items)).encode(), 6, mtime=0)
