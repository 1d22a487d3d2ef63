"""The results document of docs/contracts.md, built in one place for every job kind
(:func:`results_document`, typed by ``headq_spec.results.ResultsDocument``): versions, run rows
(perplexity, excess, share of excess removed), head rows and arrays."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch

from headq_core.config import RunSpec
from headq_core.evaluation.uncertainty import Statistic, bootstrap, resample_indices
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


def _perplexity(name: str) -> Statistic:
    return lambda nll: torch.exp(nll[name])


def _excess(name: str, dense: str) -> Statistic:
    return lambda nll: torch.exp(nll[name]) - torch.exp(nll[dense])


def _removed(name: str, base: str, dense: str) -> Statistic:
    run_excess, base_excess = _excess(name, dense), _excess(base, dense)
    return lambda nll: 1.0 - run_excess(nll) / base_excess(nll)


def run_rows(runs: list[RunSpec], window_nll: dict[str, torch.Tensor], window_tokens: int,
             effective_bits: dict[str, dict[str, float]], seed: int = 0) -> list[dict[str, Any]]:
    """One row per run from its per-window NLL sums [n_windows] over ``window_tokens`` scored tokens
    each. ``excess_perplexity`` needs a dense run; ``excess_removed`` is set on HeadQ runs whose
    base run (:func:`base_run_name`) is present and has a non-zero excess. Each aggregate comes
    with a paired bootstrap standard error and interval (``evaluation.uncertainty``)."""
    per_window = {name: sums.double() / window_tokens for name, sums in window_nll.items()}
    point = {name: m.mean() for name, m in per_window.items()}  # mean NLL per token of each run
    indices = resample_indices(len(next(iter(per_window.values()))), seed)
    dense = next((r.name for r in runs if r.is_dense), None)
    rows = []
    for run in runs:
        name = run.name
        statistics = {"perplexity": _perplexity(name)}
        if dense is not None:
            statistics["excess_perplexity"] = _excess(name, dense)
            base = base_run_name(run, runs) if run.headq is not None else None
            if base is not None and float(_excess(base, dense)(point)) != 0.0:
                statistics["excess_removed"] = _removed(name, base, dense)
        row: dict[str, Any] = {"name": name, "spec": run.to_dict(), "effective_bits": effective_bits[name],
                               "nll": float(point[name]), "tokens": window_tokens * len(per_window[name]),
                               "excess_perplexity": None, "excess_removed": None}
        for field, statistic in statistics.items():
            row[field] = float(statistic(point))
            row.update(bootstrap(per_window, statistic, indices).fields(field))
        row.update(window_nll=[float(v) for v in window_nll[name]], window_tokens=window_tokens)
        rows.append(row)
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
