"""Reading the study's job files into *records*: one dict per run of an evaluation job, its head
rows attached, and the filters every table shares (K-only, plain base, one per configuration)."""

from __future__ import annotations

import gzip
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from studies.paper.specs import study_jobs

Record = dict[str, Any]
TIE = 1e-9  # effective bits closer than this are "equal"


def read_jobs(folder: Path) -> dict[str, dict[str, Any]]:
    """``{job name: job item}`` of every ``*.json.gz`` job file in ``folder``, in the study's order
    (calibrations, exp1, exp2, exp4, budget, shakespeare; unknown names last)."""
    items = {}
    for path in sorted(Path(folder).glob("*.json.gz")):
        item = json.loads(gzip.decompress(path.read_bytes()))
        for key in ("name", "spec", "results"):
            if key not in item:
                raise ValueError(f"{path.name}: job file has no '{key}'")
        items[item["name"]] = item
    order = {j.name: i for i, j in enumerate(study_jobs())}
    return {name: items[name] for name in sorted(items, key=lambda n: (order.get(n, len(order)), n))}


def missing_jobs(present: Iterable[str]) -> list[str]:
    """Names of the study's jobs (:func:`studies.paper.specs.study_jobs`) with no job file."""
    have = set(present)
    return [j.name for j in study_jobs() if j.name not in have]


def run_records(items: Iterable[dict[str, Any]]) -> list[Record]:
    """One record per run of every evaluation job: job, family, corpus, calibration (the job spec's
    ``calibration_job``), name, spec, key/value bits, perplexity, nll, excess, removed, the job's
    dense nll, and ``heads`` (its head rows)."""
    out = []
    for item in items:
        doc = item["results"]
        if doc.get("kind") != "evaluation":
            continue
        heads = defaultdict(list)
        for row in doc.get("heads", []):
            heads[row["run"]].append(row)
        dense = next((r for r in doc.get("runs", []) if not quantized(r.get("spec") or {})), None)
        for r in doc.get("runs", []):
            bits = r.get("effective_bits") or {}
            out.append(
                {
                    "job": item["name"],
                    "family": item.get("family"),
                    "corpus": (doc.get("dataset") or {}).get("name"),
                    "calibration": (item.get("spec") or {}).get("calibration_job"),
                    "name": r["name"],
                    "spec": r.get("spec") or {},
                    "key_bits": bits.get("key"),
                    "value_bits": bits.get("value"),
                    "perplexity": r.get("perplexity"),
                    "nll": r.get("nll"),
                    "excess": r.get("excess_perplexity"),
                    "removed": r.get("excess_removed"),
                    "dense_nll": dense.get("nll") if dense else None,
                    "heads": heads.get(r["name"], []),
                }
            )
    return out


def quantized(spec: dict) -> bool:
    """Keys or values quantized (False for the dense reference)."""
    return bool(spec.get("key") or spec.get("value"))


def k_only(spec: dict) -> bool:
    """Keys quantized, values dense, no value policy nor intervention (HeadQ allowed)."""
    return bool(spec.get("key")) and not (
        spec.get("value") or spec.get("value_policy") or spec.get("intervention")
    )


def is_base(r: Record) -> bool:
    """A plain K-only run: a key quantizer alone."""
    return k_only(r["spec"]) and not r["spec"].get("headq")


def wrong_sign(spec: dict) -> bool:
    """A HeadQ correction applied with the wrong sign (a control, not a method)."""
    return (spec.get("headq") or {}).get("sign", 1) == -1


def variants(records: Sequence[Record], base: Record) -> list[Record]:
    """HeadQ runs of the base's job on the base's key quantizer (values dense, no intervention)."""
    return [
        r
        for r in records
        if r["job"] == base["job"]
        and k_only(r["spec"])
        and r["spec"].get("headq")
        and r["spec"]["key"] == base["spec"]["key"]
    ]


def finite(v: Any) -> bool:
    """A real finite number (bools and None excluded)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def head_values(record: Record, metric: str) -> list[float]:
    """The run's finite values of one head metric (``[heads]``)."""
    return [h[metric] for h in record["heads"] if finite(h.get(metric))]


def head_mean(record: Record, metric: str) -> float | None:
    """Mean of one metric over the run's heads (finite values only), None when there is none."""
    vals = head_values(record, metric)
    return float(np.mean(vals)) if vals else None


def head_sum(record: Record, metric: str) -> float | None:
    """Sum of one metric over the run's heads (finite values only), None when there is none."""
    vals = head_values(record, metric)
    return float(np.sum(vals)) if vals else None


def unique(records: Iterable[Record]) -> list[Record]:
    """First record of each configuration (corpus, calibration and run spec, the name aside): a
    run repeated in several jobs (the plain bases, exp2's query_pca runs) counts once."""
    seen, out = set(), []
    for r in records:
        spec = json.dumps({k: v for k, v in r["spec"].items() if k != "name"}, sort_keys=True)
        if (r["corpus"], r["calibration"], spec) not in seen:
            seen.add((r["corpus"], r["calibration"], spec))
            out.append(r)
    return out


def job_names(records: Iterable[Record]) -> list[str]:
    """Sorted names of the jobs the records come from."""
    return sorted({r["job"] for r in records})
