"""``headq calibrate`` and ``headq eval``: run the core locally (no server), from a job spec file
or from flags for the common fields, with a tqdm progress bar."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from headq_spec.jobs import JobSpec
from headq_spec.metrics import HEAD_METRICS
from headq_spec.runs import HeadQConfig

PRESETS = ("k-only", "headq", "controls", "full-kv")
HEAD_FIELDS = ("run", "layer", "head", "kv_head", *HEAD_METRICS)


def preset_runs(preset: str, bits: int, group: int, residual: int, rank: int) -> list[dict[str, Any]]:
    """Run dicts of a preset: ``k-only`` (dense, K-only), ``headq`` (+ HeadQ), ``controls`` (+ wrong
    sign, random and key_pca bases), ``full-kv`` (dense, K+V, + HeadQ, + online A² value policy)."""
    if preset not in PRESETS:
        raise ValueError(f"runs: unknown preset {preset!r}; choose one of {PRESETS}")
    key = {"bits": bits, "axis": "per_channel", "group_size": group, "residual": residual}
    value = {"bits": bits, "axis": "per_token", "group_size": group, "residual": max(residual, group)}
    hq = {"rank": rank, "side_bits": 8}
    k = f"k{bits}"
    if preset == "full-kv":
        kv = f"kv{bits}"
        return [
            {"name": "dense"},
            {"name": kv, "key": key, "value": value},
            {"name": f"{kv}_headq{rank}", "key": key, "value": value, "headq": hq},
            {
                "name": f"{kv}_headq{rank}_a2",
                "key": key,
                "value": value,
                "headq": hq,
                "value_policy": {"mode": "online", "keep_fraction": 0.1},
            },
        ]
    runs: list[dict[str, Any]] = [{"name": "dense"}, {"name": k, "key": key}]
    if preset in ("headq", "controls"):
        runs.append({"name": f"{k}_headq{rank}", "key": key, "headq": hq})
    if preset == "controls":
        runs += [
            {"name": f"{k}_headq{rank}_wrong_sign", "key": key, "headq": {**hq, "sign": -1}},
            {"name": f"{k}_headq{rank}_random", "key": key, "headq": {**hq, "basis": "random"}},
            {"name": f"{k}_headq{rank}_key_pca", "key": key, "headq": {**hq, "basis": "key_pca"}},
        ]
    return runs


def _base_spec(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    if args.spec:
        from headq_cli.jobs import load_spec

        spec = load_spec(Path(args.spec))
        if spec.get("kind") != kind:
            raise ValueError(
                f"kind: the spec file holds a {spec.get('kind')!r} job, 'headq {args.command}' "
                f"runs a {kind!r} job"
            )
        return spec
    if not args.model:
        raise ValueError("model: give --model or --spec")
    dataset = {"source": "builtin", "name": "sotu", "window": args.window, "max_tokens": args.max_tokens}
    if args.files:
        dataset = {**dataset, "source": "files", "name": "files", "files": args.files}
    return {"kind": kind, "model": {"id": args.model, "device": args.device}, "dataset": dataset}


class _Bar:
    """``progress(fraction, stage)`` drawn as a tqdm bar."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1000, unit="‰", bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}")

    def __call__(self, fraction: float, stage: str) -> None:
        self.bar.set_description_str(stage[:40])
        self.bar.update(int(fraction * 1000) - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _run(spec: dict[str, Any], blob: bytes | None) -> tuple[dict[str, Any], bytes | None]:
    from workers.pipeline import execute

    JobSpec.model_validate(spec)  # a bad spec is refused before the progress bar is drawn
    bar = _Bar()
    try:
        return execute(spec, calibration_blob=blob, progress=bar)
    finally:
        bar.close()


def _interval(row: dict[str, Any], name: str, fmt: str) -> str:
    """`` [lo, hi]`` of ``row``'s ``<name>_ci`` formatted with ``fmt``, or nothing."""
    ci = row.get(f"{name}_ci")
    return "" if not ci else f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def run_line(row: dict[str, Any]) -> str:
    """One run of a results document as a line: perplexity, excess and share removed, each with its
    95% interval when the document has one."""
    line = f"{row['name']:28s} ppl {row['perplexity']:9.3f}{_interval(row, 'perplexity', '.3f')}"
    if row.get("excess_perplexity") is not None:
        line += f"  excess {row['excess_perplexity']:+.3f}{_interval(row, 'excess_perplexity', '+.3f')}"
    if row.get("excess_removed") is not None:
        line += f"  removed {row['excess_removed']:.1%}{_interval(row, 'excess_removed', '.1%')}"
    return line


def _write_json(path: str | None, doc: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(doc, indent=1))
        print(f"wrote {path}")


def calibrate_command(args: argparse.Namespace) -> int:
    """``headq calibrate``: query statistics; saves the calibration folder (``--save``)."""
    from headq_core.evaluation.calibrate import Calibration

    spec = _base_spec(args, "calibration")
    if not args.spec and args.rank is not None:
        spec["calibration"] = {"rank": args.rank}
    doc, blob = _run(spec, None)
    assert blob is not None  # a calibration job always returns its artifact
    Calibration.from_bytes(blob).save(args.save)
    print(f"calibration ({doc['dataset']['tokens']} tokens, rank {doc['rank']}) saved to {args.save}")
    _write_json(args.out, doc)
    return 0


def eval_command(args: argparse.Namespace) -> int:
    """``headq eval``: perplexity and per-head metrics of the runs; JSON document and head CSV."""
    from headq_core.evaluation.calibrate import Calibration

    spec = _base_spec(args, "evaluation")
    if not args.spec:
        rank = HeadQConfig().rank if args.rank is None else args.rank
        spec["runs"] = preset_runs(args.runs, args.bits, args.group, args.residual, rank)
        spec["seed"] = args.seed
    blob = None
    if args.calibration:
        blob = Calibration.load(args.calibration).to_bytes()
        spec.setdefault("calibration_job", f"local:{Path(args.calibration).name}"[:64])
    elif any("headq" in r or "intervention" in r for r in spec.get("runs", [])):
        raise ValueError(
            "calibration: HeadQ runs need --calibration DIR (made by 'headq calibrate --save DIR')"
        )
    doc, _ = _run(spec, blob)
    print(f"95% intervals: paired bootstrap over {doc['dataset']['windows']} windows "
          f"({doc['dataset']['tokens_scored']} tokens scored)")
    for row in doc["runs"]:
        print(run_line(row))
    _write_json(args.out, doc)
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=HEAD_FIELDS)
            writer.writeheader()
            writer.writerows(doc["heads"])
        print(f"wrote {args.csv}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", help="job spec file (YAML or JSON); flags below are then ignored")
    p.add_argument("--model", help="hub id, local folder, .gguf file or builtin:smollm2-135m")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--files", nargs="+", help="local text files instead of the built-in corpus")
    p.add_argument("--window", type=int, default=1024, help="tokens per window")
    p.add_argument("--max-tokens", type=int, default=32768, help="at most this many tokens")
    p.add_argument("--rank", type=int, help="eval: HeadQ rank (default 8); calibrate: query directions "
                   "kept (default 64, as a calibration job's spec)")
    p.add_argument("--out", help="write the results document (JSON) here")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``calibrate`` and ``eval`` to the ``headq`` command."""
    c = subparsers.add_parser("calibrate", help="calibrate query statistics locally")
    _common(c)
    c.add_argument("--save", required=True, help="folder for the calibration (safetensors + JSON)")
    c.set_defaults(func=calibrate_command)
    e = subparsers.add_parser("eval", help="evaluate quantization configs locally")
    _common(e)
    e.add_argument("--bits", type=int, default=2)
    e.add_argument("--group", type=int, default=32, help="quantization group size")
    e.add_argument("--residual", type=int, default=0, help="full-precision residual window")
    e.add_argument("--runs", default="headq", choices=PRESETS, help="preset list of runs")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--calibration", help="calibration folder (from 'headq calibrate --save')")
    e.add_argument("--csv", help="write the per-head rows as CSV here")
    e.set_defaults(func=eval_command)
