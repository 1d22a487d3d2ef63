"""Turn the Jobs page's form values into an evaluation job spec (docs/contracts.md "Job spec").

Pure: no Dash, no HTTP. Only the form's own shape is checked here (a missing number names its
field); the API validates the spec and its words are what the user sees.
"""

from __future__ import annotations

from typing import Any


def _number(value: Any, field: str, kind: type = int) -> Any:
    if value is None or value == "":
        raise ValueError(f"{field}: a value is required")
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: must be a number, got {value!r}") from None
    if kind is int and out != float(value):
        raise ValueError(f"{field}: must be a whole number, got {value!r}")
    return out


def run_name(key_bits: int, headq: dict | None, value_bits: int | None, policy: str | None) -> str:
    """A readable configuration name such as ``k2``, ``k2-headq-r8``, ``k2-v2-a2``."""
    name = f"k{key_bits}"
    if headq is not None:
        name += f"-headq-r{headq['rank']}" + ("" if headq["basis"] == "query_pca" else f"-{headq['basis']}")
        name += "-wrongsign" if headq["sign"] == -1 else ""
    if value_bits is not None:
        name += f"-v{value_bits}" + (f"-a2{policy}" if policy else "")
    return name


def build_spec(form: dict[str, Any]) -> dict[str, Any]:
    """Job spec from form values.

    Keys: ``label, model, calibration_job, bits, group_size, residual, axis, headq (bool), rank,
    basis, sign, value_bits ('dense' or int), value_policy ('none'|'online'|'oracle'),
    keep_fraction, baselines (bool), dataset_source, dataset_name, split, tokens, window,
    head_windows`` (empty split or head windows: the API's default). With ``baselines`` the spec
    also evaluates the dense model and, for a HeadQ run, the same quantizer without HeadQ (so
    excess and excess removed exist).
    """
    model = (form.get("model") or "").strip()
    if not model:
        raise ValueError("model: a model id is required")
    key = {
        "bits": _number(form.get("bits"), "bits"),
        "axis": form.get("axis") or "per_channel",
        "group_size": _number(form.get("group_size"), "group_size"),
        "residual": _number(form.get("residual"), "residual"),
    }
    headq = None
    if form.get("headq"):
        headq = {
            "rank": _number(form.get("rank"), "rank"),
            "basis": form.get("basis") or "query_pca",
            "sign": _number(form.get("sign"), "sign"),
        }
    value_bits = (
        None if form.get("value_bits") in (None, "", "dense") else _number(form["value_bits"], "value_bits")
    )
    policy = form.get("value_policy") if form.get("value_policy") not in (None, "", "none") else None
    run: dict[str, Any] = {"key": key}
    if headq:
        run["headq"] = headq
    if value_bits is not None:
        run["value"] = {
            "bits": value_bits,
            "axis": "per_token",
            "group_size": key["group_size"],
            "residual": key["residual"],
        }
        if policy:
            run["value_policy"] = {
                "mode": policy,
                "keep_fraction": _number(form.get("keep_fraction"), "keep_fraction", float),
            }
    elif policy:
        raise ValueError("value_policy: needs quantized values (choose value bits)")
    run["name"] = run_name(key["bits"], headq, value_bits, policy)
    runs = [run]
    if form.get("baselines"):
        runs.insert(0, {"name": "dense"})
        if headq:
            base = {k: v for k, v in run.items() if k != "headq"}
            base["name"] = run_name(key["bits"], None, value_bits, policy)
            runs.insert(1, base)
    spec: dict[str, Any] = {"kind": "evaluation", "model": {"id": model}, "dataset": dataset(form),
                            "runs": runs}
    if form.get("label"):
        spec["label"] = str(form["label"])
    if form.get("calibration_job"):
        spec["calibration_job"] = form["calibration_job"]
    return spec


def dataset(form: dict[str, Any]) -> dict[str, Any]:
    """The spec's dataset block: source, name, split, tokens, window, head windows."""
    out: dict[str, Any] = {
        "source": form.get("dataset_source") or "builtin",
        "name": (form.get("dataset_name") or "sotu").strip(),
        "max_tokens": _number(form.get("tokens"), "tokens"),
        "window": _number(form.get("window"), "window"),
    }
    if (form.get("split") or "").strip():
        out["split"] = form["split"].strip()
    if form.get("head_windows") not in (None, ""):
        out["head_windows"] = _number(form["head_windows"], "head_windows")
    return out
