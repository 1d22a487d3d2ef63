"""``headq calibrate`` and ``headq eval``: run the core locally (no server), from a job spec file
or from flags for the common fields, with a tqdm progress bar (window n/N, ETA); ``eval`` ends with
the results table."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from headq_cli.helptext import HelpFormatter
from headq_cli.presets import PRESETS, preset_help, preset_runs
from headq_cli.progress import WindowProgress
from headq_cli.table import results_table
from headq_spec.jobs import JobSpec
from headq_spec.metrics import HEAD_METRICS
from headq_spec.runs import HeadQConfig

HEAD_FIELDS = ("run", "layer", "head", "kv_head", *HEAD_METRICS)


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
    dataset: dict[str, Any] = {"source": args.source, "name": args.dataset, "split": args.split,
                               "window": args.window, "max_tokens": args.max_tokens}
    if args.files:
        dataset = {**dataset, "source": "files", "name": "files", "files": args.files}
    if getattr(args, "head_windows", None) is not None:
        dataset["head_windows"] = args.head_windows
    return {"kind": kind, "model": {"id": args.model, "device": args.device}, "dataset": dataset}


class _Bar:
    """``progress(fraction, stage)`` drawn as a tqdm bar with window n/N and an ETA."""

    def __init__(self, runs: int, batch: int) -> None:
        from tqdm import tqdm

        self.lines = WindowProgress(runs, batch)
        self.bar = tqdm(total=1000, bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}")

    def __call__(self, fraction: float, stage: str) -> None:
        self.bar.set_description_str(self.lines.text(fraction, stage[:40]))
        self.bar.update(int(fraction * 1000) - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _run(spec: dict[str, Any], blob: bytes | None) -> tuple[dict[str, Any], bytes | None]:
    from workers.pipeline import execute

    job = JobSpec.model_validate(spec)  # a bad spec is refused before the progress bar is drawn
    bar = _Bar(len(job.runs), job.dataset.batch)
    try:
        return execute(spec, calibration_blob=blob, progress=bar)
    finally:
        bar.close()


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
        spec["runs"] = preset_runs(args.runs, args.bits, args.group, args.residual, rank, args.value_bits)
        spec["seed"] = args.seed
    blob = None
    if args.calibration:
        blob = Calibration.load(args.calibration).to_bytes()
        spec.setdefault("calibration_job", f"local:{Path(args.calibration).name}"[:64])
    elif any("headq" in r or "intervention" in r or any(
            (r.get(side) or {}).get("fp8_static") or (r.get(side) or {}).get("codebook") == "nuq"
            for side in ("key", "value")) for r in spec.get("runs", [])):
        raise ValueError("calibration: HeadQ, static fp8 and nuq runs need --calibration DIR (made by "
                         "'headq calibrate --save DIR')")
    doc, _ = _run(spec, blob)
    print(f"95% intervals: paired bootstrap over {doc['dataset']['windows']} windows "
          f"({doc['dataset']['tokens_scored']} tokens scored)")
    print(results_table(doc))
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
    p.add_argument("--source", default="builtin", choices=("builtin", "hf"),
                   help="text source (local files: --files)")
    p.add_argument("--dataset", default="sotu", help="builtin corpus (sotu, shakespeare) or hf dataset id")
    p.add_argument("--split", help="dataset split (builtin: calibration or eval; default: all the text)")
    p.add_argument("--files", nargs="+", help="local text files instead of --source / --dataset")
    p.add_argument("--window", type=int, default=1024, help="tokens per window")
    p.add_argument("--max-tokens", type=int, default=32768, help="at most this many tokens")
    p.add_argument("--rank", type=int, help="eval: HeadQ rank (default 8); calibrate: query directions "
                   "kept (default 64, as a calibration job's spec)")
    p.add_argument("--out", help="write the results document (JSON) here")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``calibrate`` and ``eval`` to the ``headq`` command."""
    c = subparsers.add_parser("calibrate", help="calibrate query statistics locally",
                              formatter_class=HelpFormatter)
    _common(c)
    c.add_argument("--save", required=True, help="folder for the calibration (safetensors + JSON)")
    c.set_defaults(func=calibrate_command)
    e = subparsers.add_parser("eval", help="evaluate quantization configs locally",
                              formatter_class=HelpFormatter,
                              epilog=f"--runs presets (B = --bits, R = --rank):\n{preset_help()}")
    _common(e)
    e.add_argument("--bits", type=int, default=2, help="key bits (and value bits unless --value-bits)")
    e.add_argument("--value-bits", type=int, help="value bits of the full-kv preset (default: --bits)")
    e.add_argument("--group", type=int, default=32, help="quantization group size")
    e.add_argument("--residual", type=int, default=0, help="full-precision residual window")
    e.add_argument("--runs", default="headq", choices=tuple(PRESETS), metavar="PRESET",
                   help="preset list of runs (below)")
    e.add_argument("--head-windows", type=int, help="windows over which per-head metrics are computed "
                   "(default: all; perplexity uses all)")
    e.add_argument("--seed", type=int, default=0, help="evaluation seed (bootstrap intervals)")
    e.add_argument("--calibration", help="calibration folder (from 'headq calibrate --save')")
    e.add_argument("--csv", help="write the per-head rows as CSV here")
    e.set_defaults(func=eval_command)
