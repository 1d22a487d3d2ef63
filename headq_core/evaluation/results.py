"""The results document of docs/contracts.md, built in one place for every job kind
(:func:`results_document`, typed by ``headq_spec.results.ResultsDocument``): versions, run rows
(perplexity, excess, share of excess removed), head rows and arrays."""

from __future__ import annotations

import math
import platform
from importlib import metadata
from typing import Any

import torch

from headq_core.config import RunSpec
from headq_spec.results import ResultsDocument

SCHEMA_VERSION = 1


ARRAY_DIGITS = 6  # significant digits kept in result arrays (they come from float32 sums)


def compact_list(values: torch.Tensor) -> list:
    """A tensor as nested lists of floats rounded to ``ARRAY_DIGITS`` significant digits: the
    results document's arrays (A² profiles of every run, layer and KV head) are its bulk, and
    17-digit JSON floats doubled its size without carrying information float32 has."""
    flat = [float(f"{v:.{ARRAY_DIGITS}g}") for v in values.double().flatten().tolist()]
    return torch.tensor(flat, dtype=torch.float64).reshape(values.shape).tolist()


def versions() -> dict[str, str]:
    """Versions of headq-lab, torch, transformers and Python."""

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {
        "headq_lab": version("headq-lab"),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "python": platform.python_version(),
    }


def base_run_name(run: RunSpec, runs: list[RunSpec]) -> str | None:
    """Name of the run with the same key/value quantizers and value policy but no HeadQ, nor
    intervention (the reference for ``excess_removed``), or None."""
    for other in runs:
        if (
            other.headq is None
            and other.intervention is None
            and other.key == run.key
            and other.value == run.value
            and other.value_policy == run.value_policy
        ):
            return other.name
    return None


def run_rows(
    runs: list[RunSpec], nll_sums: dict[str, float], tokens: int, effective_bits: dict[str, dict[str, float]]
) -> list[dict[str, Any]]:
    """One row per run. ``excess_perplexity`` needs a dense run; ``excess_removed`` is set on HeadQ
    runs whose base run (:func:`base_run_name`) is present and has a non-zero excess."""
    ppl = {r.name: math.exp(nll_sums[r.name] / tokens) for r in runs}
    dense = next((r.name for r in runs if r.is_dense), None)
    excess = {name: (p - ppl[dense]) if dense else None for name, p in ppl.items()}
    rows = []
    for run in runs:
        removed = None
        base = base_run_name(run, runs) if run.headq is not None else None
        base_excess, run_excess = excess.get(base or ""), excess[run.name]
        if base_excess and run_excess is not None:
            removed = 1.0 - run_excess / base_excess
        rows.append(
            {
                "name": run.name,
                "spec": run.to_dict(),
                "effective_bits": effective_bits[run.name],
                "perplexity": ppl[run.name],
                "nll": nll_sums[run.name] / tokens,
                "tokens": tokens,
                "excess_perplexity": excess[run.name],
                "excess_removed": removed,
            }
        )
    return rows


def results_document(kind: str, model: dict[str, Any], dataset: dict[str, Any], seconds: float,
                     **fields: Any) -> dict[str, Any]:
    """A results document of ``kind``: the fields every kind has (schema version, model, dataset,
    library versions, timing) and the kind's own ``fields``, validated against the typed document
    (a ``pydantic.ValidationError`` is a bug here, never a user's error)."""
    doc = {"schema_version": SCHEMA_VERSION, "kind": kind, "model": model, "dataset": dataset,
           "versions": versions(), **fields, "timing": {"seconds": round(seconds, 3)}}
    return ResultsDocument.model_validate(doc).model_dump(exclude_unset=True)


def calibration_document(
    calibration: Any, model: dict[str, Any], dataset: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """The results document of a calibration job (its artifact is ``calibration.to_bytes()``)."""
    return results_document("calibration", model, dataset, seconds, rank=calibration.rank,
                            arrays={"query_spectrum": compact_list(calibration.eigenvalues)})
