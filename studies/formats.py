"""The KV caches engines ship, side by side with KIVI and HeadQ, on SmolLM2-135M: dense, FP8 e4m3 /
e5m2 (one dynamic scale per layer, as vLLM's fp8 cache), FP8 e4m3 with a static per-layer scale from
the calibration's amax (vLLM's calibrated ``k_scale`` / ``v_scale``), llama.cpp q8_0 / q4_0 / q4_1,
KIVI 2/3/4-bit (per-channel keys, per-token values, G = 32), KIVI 2-bit keeping 1% of each token
group exact (KVQuant's dense-and-sparse outliers), Hadamard-rotated KIVI 2/3-bit and KIVI 2-bit with
its keys quantized before RoPE (KVQuant's pre-RoPE per-channel keys), ``kvquant2``: KIVI 2-bit with
KVQuant's non-uniform codebooks learned at calibration (``codebook="nuq"``; the calibration learns
them on post-RoPE keys, so not combined with pre-RoPE keys), each without and with
HeadQ on its keys (rank 8, 8-bit side codes). Keys and values in the same format, no full-precision
window (R = 0), so each effective-bits figure is the whole cache's. Built-in State of the Union corpus:
calibration on the addresses up to 2001, evaluation on 2002-2021.

Reports perplexity, excess over dense and the share HeadQ removes (paired bootstrap intervals over
windows), effective key / value bits, Spearman(attn_kl, fisher) over the heads of each run, and the
budget frontier (Pareto in mean KV bits against excess). Writes JSON (every config field, per-window
NLL sums, versions, device, commit) and a Markdown summary.

    .venv/bin/python -m studies.formats --out docs/results/formats.json
(on a GPU machine: ``--device cuda``; ``--windows`` / ``--head-windows`` for a shorter run)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headq_core.config import FORMAT_BITS, HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.calibrate import calibrate
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.models.loading import BUILTIN_SMOLLM2, LoadedModel, load_model
from testkit.provenance import provenance

RANK = 8
ENGINE = ("fp8_e4m3", "fp8_e5m2", "q8_0", "q4_0", "q4_1")  # the issue's list (FORMAT_BITS has them all)


def format_runs(group: int = 32, rank: int = RANK) -> list[RunSpec]:
    """dense, then every format without and with HeadQ (``<name>+headq<rank>``)."""
    sides: dict[str, tuple[QuantConfig, QuantConfig]] = {}
    for name in ENGINE:
        side = QuantConfig(format=name, bits=FORMAT_BITS[name], axis="per_token")  # type: ignore[arg-type]
        sides[name] = (side, side)
    static = QuantConfig(format="fp8_e4m3", bits=8, axis="per_token", fp8_static=True)
    sides["fp8_e4m3_static"] = (static, static)
    for bits in (2, 3, 4):
        sides[f"kivi{bits}"] = (QuantConfig(bits=bits, axis="per_channel", group_size=group),
                                QuantConfig(bits=bits, axis="per_token", group_size=group))
    sides["kivi2+outliers1%"] = (QuantConfig(bits=2, axis="per_channel", group_size=group, outliers=0.01),
                                 QuantConfig(bits=2, axis="per_token", group_size=group, outliers=0.01))
    for bits in (2, 3):
        sides[f"hadamard+kivi{bits}"] = (
            QuantConfig(bits=bits, axis="per_channel", group_size=group, rotation="hadamard"),
            QuantConfig(bits=bits, axis="per_token", group_size=group, rotation="hadamard"))
    sides["prerope+kivi2"] = (QuantConfig(bits=2, axis="per_channel", group_size=group, pre_rope=True),
                              QuantConfig(bits=2, axis="per_token", group_size=group))
    sides["kvquant2"] = (QuantConfig(bits=2, axis="per_channel", group_size=group, codebook="nuq"),
                         QuantConfig(bits=2, axis="per_token", group_size=group, codebook="nuq"))
    runs = [RunSpec("dense")]
    for name, (key, value) in sides.items():
        runs.append(RunSpec(name, key=key, value=value))
        runs.append(RunSpec(f"{name}+headq{rank}", key=key, value=value, headq=HeadQConfig(rank=rank)))
    return runs


def format_label(cfg: dict[str, Any] | None) -> str:
    """A spec side as one short label: ``q4_0``, ``int2 per_channel G32``, ``... + hadamard``,
    ``... pre-RoPE``."""
    if cfg is None:
        return "fp16"
    fmt = cfg.get("format", "int")
    label = fmt if fmt != "int" else f"int{cfg['bits']} {cfg['axis']} G{cfg['group_size']}"
    label += f" ({cfg['fp8_scale']} scale)" if "fp8_scale" in cfg else ""
    label += " static" if cfg.get("fp8_static") else ""
    label += f" + {cfg['outliers']:.0%} outliers" if cfg.get("outliers") else ""
    label += " sym" if cfg.get("symmetric") else ""
    label += " pre-RoPE" if cfg.get("pre_rope") else ""
    label += " nuq" if cfg.get("codebook") == "nuq" else ""
    return label + (f" + {cfg['rotation']}" if cfg.get("rotation", "none") != "none" else "")


def summary_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per run: bits, perplexity, excess, share removed, Spearman(attn_kl, fisher), intervals."""
    rows = []
    for r in doc["runs"]:
        bits = r["effective_bits"]
        rho = (r.get("rank_correlations") or {}).get("fisher") or {}
        rows.append({"run": r["name"], "key": format_label(r["spec"].get("key")),
                     "value": format_label(r["spec"].get("value")), "key_bits": bits["key"],
                     "value_bits": bits["value"], "kv_bits": (bits["key"] + bits["value"]) / 2,
                     **{f: r.get(f) for f in ("perplexity", "perplexity_ci", "excess_perplexity",
                                              "excess_perplexity_ci", "excess_removed", "excess_removed_ci")},
                     "rho_fisher": rho.get("rho"), "rho_fisher_ci": rho.get("ci")})
    return rows


def frontier(rows: list[dict[str, Any]]) -> list[str]:
    """Names of the runs on the Pareto frontier of (mean KV bits, excess perplexity), fewest bits
    first: each run whose excess is below that of every run at fewer or equal bits (the rule of
    ``studies.paper.frontier.pareto_rows``; of equal points the first counts)."""
    front: list[dict[str, Any]] = []
    for r in sorted((r for r in rows if r["excess_perplexity"] is not None),
                    key=lambda r: (r["kv_bits"], r["excess_perplexity"])):
        if not front or r["excess_perplexity"] < front[-1]["excess_perplexity"]:
            front.append(r)
    return [r["run"] for r in front]


def progress_printer() -> Callable[[float, str], None]:
    """A progress callback that prints each new step once, with the share done and the time so far."""
    started, last = time.perf_counter(), [""]

    def show(done: float, message: str) -> None:
        if message != last[0]:
            last[0] = message
            print(f"{done:6.1%} {time.perf_counter() - started:7.0f} s  {message}", flush=True)
    return show


def run_study(lm: LoadedModel, *, window: int, windows: int, head_windows: int | None, calib_tokens: int,
              group: int = 32, rank: int = RANK,
              progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Calibrate, evaluate every run of :func:`format_runs`: the study's document (no provenance)."""
    started = time.perf_counter()
    cal = calibrate(lm, CorpusSpec(split="calibration"), window=window, max_tokens=calib_tokens, rank=rank)
    runs = format_runs(group, rank)
    doc = evaluate(lm, CorpusSpec(split="eval"), runs, cal, window=window, max_tokens=windows * window,
                   head_windows=head_windows, progress=progress)
    rows = summary_rows(doc)
    return {"seconds": round(time.perf_counter() - started), "model": doc["model"],
            "calibration": cal.meta | {"model": None}, "dataset": doc["dataset"],
            "runs": [r.to_dict() for r in runs], "versions": doc["versions"], "device": doc["device"],
            "uncertainty": doc["uncertainty"], "summary": rows, "frontier": frontier(rows),
            "window_nll": {r["name"]: r["window_nll"] for r in doc["runs"]}}


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else f"{value:{fmt}}"


def _interval(row: dict[str, Any], field: str, fmt: str, scale: float = 1.0) -> str:
    value, ci = row.get(field), row.get(f"{field}_ci")
    if value is None:
        return "–"
    text = f"{value * scale:{fmt}}"
    return text + (f" [{ci[0] * scale:{fmt}}, {ci[1] * scale:{fmt}}]" if ci else "")


def markdown(out: dict[str, Any]) -> str:
    """The Markdown summary of a study document."""
    ds, model, on = out["dataset"], out["model"], set(out["frontier"])
    lines = [
        "# The KV caches engines ship, measured per head: FP8, llama.cpp blocks, KIVI, Hadamard, "
        "pre-RoPE keys, HeadQ",
        "", "Script: `studies/formats.py` (issue 17); results: `formats.json` (every config field, "
        "per-window NLL sums, versions, device, commit).", "", f"    {out['command']}", "",
        f"Run on {out['date']} on {out['device']}, {out['seconds']:,} s; code of commit "
        f"`{out['commit'][:7]}`. Model: `{model['id']}` ({model['layers']} layers, {model['heads']} heads, "
        f"{model['kv_heads']} KV heads, head_dim {model['head_dim']}). Calibration: "
        f"{out['calibration'].get('tokens')} tokens (split `calibration`), HeadQ rank {RANK}, 8-bit "
        f"side codes. Evaluation: {ds['windows']} windows of "
        f"{ds['window']} tokens (split `eval`), per-head metrics over {ds['head_windows']} windows. Keys "
        "and values in the same format; no full-precision window (R = 0). FP8: one dynamic float32 scale "
        "per layer and sequence (vLLM's per-tensor scale); `_static`: one per layer from the "
        "calibration's amax. Outliers: KVQuant's dense-and-sparse option, fp16 value + 16-bit index "
        "each, counted in the bits. llama.cpp: ggml's reference quantizers, "
        "blocks of 32 values of one token. Intervals: paired bootstrap over windows, 95%.", "",
        "| run | key | value | K bits | V bits | perplexity | excess | share removed by HeadQ "
        "| Spearman(attn_kl, fisher) | frontier |",
        "| --- | --- | --- | ---: | ---: | --- | --- | --- | --- | :---: |"]
    for r in out["summary"]:
        lines.append(
            f"| {r['run']} | {r['key']} | {r['value']} | {_num(r['key_bits'], '.3f')} | "
            f"{_num(r['value_bits'], '.3f')} | {_interval(r, 'perplexity', '.3f')} | "
            f"{_interval(r, 'excess_perplexity', '.3f')} | {_interval(r, 'excess_removed', '.1f', 100)} | "
            f"{_interval(r, 'rho_fisher', '.3f')} | {'●' if r['run'] in on else ''} |")
    lines += ["", "Frontier (Pareto in mean KV bits per element and excess perplexity, fewest bits first): "
              + ", ".join(f"`{name}`" for name in out["frontier"]) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--windows", type=int, default=32, help="evaluation windows (perplexity)")
    parser.add_argument("--head-windows", type=int, default=8, help="windows with per-head metrics")
    parser.add_argument("--calib-tokens", type=int, default=65536)
    parser.add_argument("--model", default=BUILTIN_SMOLLM2, help="model id, folder or .gguf file")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="docs/results/formats.json")
    args = parser.parse_args()
    origin = provenance()  # the commit that runs, read before a long run
    lm = load_model(args.model, device=args.device)
    out = origin | run_study(lm, window=args.window, windows=args.windows, head_windows=args.head_windows,
                             calib_tokens=args.calib_tokens, progress=progress_printer())
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    path.with_suffix(".md").write_text(markdown(out))
    print(markdown(out))
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
