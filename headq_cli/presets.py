"""Run names and the ``--runs`` presets of ``headq eval``; ``headq demo`` names its runs the same way,
so a name means one configuration everywhere (``k2+headq8``, ``kv2+a2``)."""

from __future__ import annotations

from typing import Any

PRESETS = {
    "k-only": "dense, k{B}",
    "headq": "dense, k{B}, k{B}+headq{R}",
    "controls": "dense, k{B}, k{B}+headq{R}, and its 'wrong sign', 'random' and 'key_pca' bases",
    "full-kv": "dense, kv{B}, kv{B}+headq{R}, kv{B}+a2, kv{B}+headq{R}+a2 (values at --value-bits)",
}
A2_ONLINE = {"mode": "online", "keep_fraction": 0.1, "high_bits": 8}


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
    """What each preset holds, one line each (``{B}`` bits, ``{R}`` rank), for ``--help``."""
    return "\n".join(f"  {name:9s} {runs}" for name, runs in PRESETS.items())


def preset_runs(preset: str, bits: int, group: int, residual: int, rank: int,
                value_bits: int | None = None) -> list[dict[str, Any]]:
    """The run dicts of ``preset`` (see :data:`PRESETS`)."""
    if preset not in PRESETS:
        raise ValueError(f"runs: unknown preset {preset!r}; choose one of {tuple(PRESETS)}")
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
