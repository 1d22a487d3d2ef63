"""Run names and the ``--runs`` presets of ``headq eval``; ``headq demo`` names its runs the same way,
so a name means one configuration everywhere (``k2+headq8``, ``kv2+a2``).

The cache formats engines ship have presets by name (:data:`FORMAT_PRESETS`): ``fp8_e4m3``,
``fp8_e4m3_static`` (per-tensor scales from the calibration, so it needs one), ``q4_0``, ``int8``,
``hadamard+k2``, ``kivi2+outliers1%`` (KVQuant's dense-and-sparse outliers), ``prerope+k2``,
``nuq+k2`` / ``nuq+kv2`` (KVQuant's non-uniform codebooks from the calibration, so they need one), ... each
evaluates dense and that cache; ``<name>+headq`` adds HeadQ on its keys; ``formats`` /
``formats+headq`` evaluate all of them in one job.
"""

from __future__ import annotations

import textwrap
from typing import Any

from headq_spec.runs import FORMAT_BITS

PRESETS = {
    "k-only": "dense, k{B}",
    "headq": "dense, k{B}, k{B}+headq{R}",
    "controls": "dense, k{B}, k{B}+headq{R}, and its 'wrong sign', 'random' and 'key_pca' bases",
    "full-kv": "dense, kv{B}, kv{B}+headq{R}, kv{B}+a2, kv{B}+headq{R}+a2 (values at --value-bits)",
}
A2_ONLINE = {"mode": "online", "keep_fraction": 0.1, "high_bits": 8}
# engine caches store keys and values alike (llama.cpp's -ctk/-ctv, vLLM's kv_cache_dtype)
ENGINE_FORMATS = FORMAT_BITS  # format -> its code width
INT_PER_TOKEN = {"int8": (8, False), "int4": (4, False), "int8-sym": (8, True), "int4-sym": (4, True)}
HADAMARD_KEYS = {"hadamard+k2": 2, "hadamard+k3": 3, "hadamard+k4": 4}  # rotated KIVI keys, values dense
STATIC_FP8 = {"fp8_e4m3_static": "fp8_e4m3", "fp8_e5m2_static": "fp8_e5m2"}  # per-tensor, calibrated
OUTLIER_KIVI = {"kivi2+outliers1%": (2, 0.01)}  # KIVI K and V (bits) with a share kept exact
# pre-RoPE KIVI keys (KVQuant), values dense: models with full-width RoPE only (adapter.check_pre_rope)
PRE_ROPE_KEYS = {"prerope+k2": 2, "prerope+k3": 3, "prerope+k4": 4}
# KIVI with non-uniform codebooks learned at calibration (KVQuant's nuq): keys only, or keys and values
NUQ_KIVI = {"nuq+k2": (2, False), "nuq+k3": (3, False), "nuq+k4": (4, False), "nuq+kv2": (2, True),
            "nuq+kv3": (3, True), "nuq+kv4": (4, True)}
FORMAT_PRESETS = (*ENGINE_FORMATS, *STATIC_FP8, *INT_PER_TOKEN, *HADAMARD_KEYS, *OUTLIER_KIVI, *PRE_ROPE_KEYS,
                  *NUQ_KIVI)
PRESETS.update({name: f"dense, {name}" for name in FORMAT_PRESETS})
PRESETS.update({f"{name}+headq": f"dense, {name}, {name}+headq{{R}}" for name in FORMAT_PRESETS})
PRESETS.update({"formats": "dense and every format preset", "formats+headq": "and each + headq{R}"})


def run_name(key_bits: int | None = None, value_bits: int | None = None, rank: int | None = None,
             a2: bool = False, control: str = "") -> str:
    """``dense``, ``k2``, ``kv2`` (same bits), ``k2v4``, then ``+headq<rank>``, ``+a2``, `` <control>``."""
    if key_bits is None:
        return "dense"
    name = f"k{key_bits}" if value_bits is None else (
        f"kv{key_bits}" if value_bits == key_bits else f"k{key_bits}v{value_bits}")
    name += f"+headq{rank}" if rank is not None else ""
    name += "+a2" if a2 else ""
    return f"{name} {control}" if control else name


def preset_help() -> str:
    """What each preset holds, one line each (``{B}`` bits, ``{R}`` rank; the format presets in
    one paragraph), for ``--help``."""
    lines = [f"  {name:9s} {runs}" for name, runs in PRESETS.items()
             if name.removesuffix("+headq") not in (*FORMAT_PRESETS, "formats")]
    lines.append("  formats   dense and every format preset below; formats+headq: and each + headq{R}")
    about = (f"format presets: {', '.join(FORMAT_PRESETS)}: dense and that KV cache as engines store it "
             "(K and V alike); *_static: fp8 with per-tensor scales from --calibration; hadamard+kN: "
             "rotated N-bit per-channel keys (group --group); kivi2+outliers1%: 2-bit per-channel keys "
             "and per-token values keeping 1% of each token group exact; "
             "prerope+kN: N-bit per-channel keys quantized before RoPE (full-width RoPE models only); "
             "nuq+kN / nuq+kvN: N-bit KIVI keys (and values) with non-uniform codebooks from --calibration; "
             "<name>+headq adds HeadQ rank R on its keys")
    lines += textwrap.wrap(about, width=100, initial_indent="  ", subsequent_indent="            ")
    return "\n".join(lines)


def format_run(name: str, group: int, residual: int) -> dict[str, Any]:
    """The run dict of the format preset ``name`` (no dense run, no HeadQ)."""
    if name in ENGINE_FORMATS:
        side = {"format": name, "bits": ENGINE_FORMATS[name], "axis": "per_token", "group_size": 32,
                "residual": residual}
        return {"name": name, "key": side, "value": side}
    if name in STATIC_FP8:
        side = {"format": STATIC_FP8[name], "bits": 8, "axis": "per_token", "group_size": 32,
                "residual": residual, "fp8_static": True}
        return {"name": name, "key": side, "value": side}
    if name in OUTLIER_KIVI:
        bits, share = OUTLIER_KIVI[name]
        common = {"bits": bits, "group_size": group, "residual": residual, "outliers": share}
        return {"name": name, "key": {**common, "axis": "per_channel"},
                "value": {**common, "axis": "per_token"}}
    if name in INT_PER_TOKEN:
        bits, symmetric = INT_PER_TOKEN[name]
        side = {"bits": bits, "axis": "per_token", "group_size": group, "residual": residual}
        side |= {"symmetric": True} if symmetric else {}
        return {"name": name, "key": side, "value": side}
    if name in HADAMARD_KEYS:
        return {"name": name, "key": {"bits": HADAMARD_KEYS[name], "axis": "per_channel", "group_size": group,
                                      "residual": residual, "rotation": "hadamard"}}
    if name in PRE_ROPE_KEYS:
        return {"name": name, "key": {"bits": PRE_ROPE_KEYS[name], "axis": "per_channel", "group_size": group,
                                      "residual": residual, "pre_rope": True}}
    if name in NUQ_KIVI:
        bits, values = NUQ_KIVI[name]
        nuq = {"bits": bits, "group_size": group, "residual": residual, "codebook": "nuq"}
        run: dict[str, Any] = {"name": name, "key": {**nuq, "axis": "per_channel"}}
        return run | ({"value": {**nuq, "axis": "per_token"}} if values else {})
    raise ValueError(f"runs: unknown format preset {name!r}; choose one of {FORMAT_PRESETS}")


def format_preset_runs(preset: str, group: int, residual: int, rank: int) -> list[dict[str, Any]]:
    """The run dicts of a format preset: dense, the format(s), and with ``+headq`` each + HeadQ."""
    base = preset.removesuffix("+headq")
    names = FORMAT_PRESETS if base == "formats" else (base,)
    runs: list[dict[str, Any]] = [{"name": run_name()}]
    for name in names:
        run = format_run(name, group, residual)
        runs.append(run)
        if preset.endswith("+headq"):
            runs.append(run | {"name": f"{name}+headq{rank}", "headq": {"rank": rank, "side_bits": 8}})
    return runs


def preset_runs(preset: str, bits: int, group: int, residual: int, rank: int,
                value_bits: int | None = None) -> list[dict[str, Any]]:
    """The run dicts of ``preset`` (see :data:`PRESETS`)."""
    if preset not in PRESETS:
        raise ValueError(f"runs: unknown preset {preset!r}; choose one of {tuple(PRESETS)}")
    if preset.removesuffix("+headq") in (*FORMAT_PRESETS, "formats"):
        return format_preset_runs(preset, group, residual, rank)
    key = {"bits": bits, "axis": "per_channel", "group_size": group, "residual": residual}
    hq = {"rank": rank, "side_bits": 8}
    runs: list[dict[str, Any]] = [{"name": run_name()}]
    if preset == "full-kv":
        vb = bits if value_bits is None else value_bits
        value = {"bits": vb, "axis": "per_token", "group_size": group, "residual": max(residual, group)}
        for headq, a2 in ((False, False), (True, False), (False, True), (True, True)):
            run: dict[str, Any] = {"name": run_name(bits, vb, rank if headq else None, a2),
                                   "key": key, "value": value}
            runs.append(run | ({"headq": hq} if headq else {}) | ({"value_policy": A2_ONLINE} if a2 else {}))
        return runs
    runs.append({"name": run_name(bits), "key": key})
    if preset in ("headq", "controls"):
        runs.append({"name": run_name(bits, rank=rank), "key": key, "headq": hq})
    if preset == "controls":
        for control, change in (("wrong sign", {"sign": -1}), ("random", {"basis": "random"}),
                                ("key_pca", {"basis": "key_pca"})):
            runs.append({"name": run_name(bits, rank=rank, control=control), "key": key,
                         "headq": {**hq, **change}})
    return runs
