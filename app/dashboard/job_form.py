"""Turn the Jobs page's form values into an evaluation job spec (docs/contracts.md "Job spec").

Pure: no Dash, no HTTP. Only the form's own shape is checked here (a missing number names its
field); the API validates the spec and its words are what the user sees.
"""

from __future__ import annotations

from typing import Any

from headq_spec.runs import FORMAT_BITS, GGML_BLOCK


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


def run_name(key_bits: int, headq: dict | None, value_bits: int | None, policy: str | None,
             fmt: str = "int", rotation: bool = False, pre_rope: bool = False, nuq: bool = False) -> str:
    """A readable configuration name such as ``k2``, ``k2-headq-r8``, ``k2-v2-a2``, ``k-q4_0-v-q4_0``,
    ``hadamard+k2``, ``prerope+k2``, ``nuq+k2``."""
    name = ("nuq+" if nuq else "") + ("prerope+" if pre_rope else "") + ("hadamard+" if rotation else "")
    name += f"k{key_bits}" if fmt == "int" else f"k-{fmt}"
    if headq is not None:
        name += f"-headq-r{headq['rank']}" + ("" if headq["basis"] == "query_pca" else f"-{headq['basis']}")
        name += "-wrongsign" if headq["sign"] == -1 else ""
    if value_bits is not None:
        name += (f"-v{value_bits}" if fmt == "int" else f"-v-{fmt}") + (f"-a2{policy}" if policy else "")
    return name


def _quantizer(form: dict[str, Any], bits: int, axis: str) -> dict[str, Any]:
    """One side's quantizer: ``int`` codes of ``bits`` along ``axis``, or the form's engine format
    (its own width, per token, blocks of 32 for llama.cpp's); rotated when the form asks."""
    fmt = form.get("format") or "int"
    out: dict[str, Any] = {"bits": bits, "axis": axis,
                           "group_size": _number(form.get("group_size"), "group_size"),
                           "residual": _number(form.get("residual"), "residual")}
    if fmt != "int":
        if fmt not in FORMAT_BITS:
            raise ValueError(f"format: must be 'int' or one of {sorted(FORMAT_BITS)}, got {fmt!r}")
        out.update(format=fmt, bits=FORMAT_BITS[fmt], axis="per_token", group_size=GGML_BLOCK)
    if form.get("rotation"):
        out["rotation"] = "hadamard"
    if form.get("nuq"):
        out["codebook"] = "nuq"
    return out


def build_spec(form: dict[str, Any]) -> dict[str, Any]:
    """Job spec from form values.

    Keys: ``label, model, calibration_job, bits, group_size, residual, axis, format ('int' or an
    engine format: keys, and values when value bits are chosen), rotation (bool), pre_rope (bool:
    keys quantized before RoPE), nuq (bool: non-uniform codebooks from the calibration, keys and
    values), headq (bool), rank,
    basis, sign, value_bits ('dense' or int), value_policy ('none'|'online'|'oracle'),
    keep_fraction, baselines (bool), dataset_source, dataset_name, split, tokens, window,
    head_windows`` (empty split or head windows: the API's default). With ``baselines`` the spec
    also evaluates the dense model and, for a HeadQ run, the same quantizer without HeadQ (so
    excess and excess removed exist).
    """
    model = (form.get("model") or "").strip()
    if not model:
        raise ValueError("model: a model id is required")
    key = _quantizer(form, _number(form.get("bits"), "bits"), form.get("axis") or "per_channel")
    if form.get("pre_rope"):
        key["pre_rope"] = True
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
        run["value"] = _quantizer(form, value_bits, "per_token")
        if policy:
            run["value_policy"] = {
                "mode": policy,
                "keep_fraction": _number(form.get("keep_fraction"), "keep_fraction", float),
            }
    elif policy:
        raise ValueError("value_policy: needs quantized values (choose value bits)")
    fmt, rotation = form.get("format") or "int", bool(form.get("rotation"))
    pre_rope, nuq = bool(form.get("pre_rope")), bool(form.get("nuq"))
    run["name"] = run_name(key["bits"], headq, value_bits, policy, fmt, rotation, pre_rope, nuq)
    runs = [run]
    if form.get("baselines"):
        runs.insert(0, {"name": "dense"})
        if headq:
            base = {k: v for k, v in run.items() if k != "headq"}
            base["name"] = run_name(key["bits"], None, value_bits, policy, fmt, rotation, pre_rope, nuq)
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
