"""``headq retrieve``: a needle-in-a-haystack retrieval job run locally (no server), from a job spec
file or from flags, ending with each run's accuracy per context length and its effective bits.
(``headq submit`` sends the same spec to a server.)"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from headq_cli.helptext import HelpFormatter
from headq_cli.presets import PRESETS, preset_help, preset_runs
from headq_spec.jobs import JobSpec
from headq_spec.metrics import HEAD_METRICS
from headq_spec.retrieval import check_retrieval_runs
from headq_spec.runs import HeadQConfig, check_run_list

HEAD_FIELDS = ("run", "layer", "head", "kv_head", *HEAD_METRICS, "prompt", "length", "depth",
               "needle_mass_dense", "needle_mass", "needle_mass_lost")


def retrieval_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The job spec of the command line: ``--spec``'s file, or one built from the flags."""
    if args.spec:
        from headq_cli.jobs import load_spec

        spec = load_spec(Path(args.spec))
        if spec.get("kind") != "retrieval":
            raise ValueError(f"kind: the spec file holds a {spec.get('kind')!r} job, 'headq retrieve' "
                             f"runs a 'retrieval' job")
        return spec
    if not args.model:
        raise ValueError("model: give --model or --spec")
    rank = HeadQConfig().rank if args.rank is None else args.rank
    dataset: dict[str, Any] = {"source": "builtin", "name": args.dataset, "max_tokens": args.max_tokens,
                               "window": min(1024, args.max_tokens)}
    if args.files:
        dataset = {**dataset, "source": "files", "name": "files", "files": args.files}
    return {"kind": "retrieval", "model": {"id": args.model, "device": args.device}, "dataset": dataset,
            "runs": preset_runs(args.runs, args.bits, args.group, args.residual, rank, args.value_bits),
            "retrieval": {"lengths": args.lengths, "depths": args.depths, "samples": args.samples,
                          "new_tokens": args.new_tokens, "template": args.template},
            "seed": args.seed}


def accuracy_table(doc: dict[str, Any]) -> str:
    """One line per run: accuracy overall and per context length, effective key / value bits."""
    block = doc["retrieval"]
    header = ["run", "accuracy", *[f"{n} tok" for n in block["lengths"]], "K bits", "V bits"]
    lines = [header]
    for row in doc["runs"]:
        grid = block["accuracy"][row["name"]]
        bits = row.get("effective_bits") or {}
        lines.append([row["name"], f"{row['accuracy']:.0%}", *[f"{sum(r) / len(r):.0%}" for r in grid],
                      *[f"{bits[s]:.2f}" if bits.get(s) is not None else "-" for s in ("key", "value")]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths,
                                                                                             strict=True)))
            for line in lines]
    return "\n".join([text[0], "-" * len(text[0]), *text[1:]])


def retrieve_command(args: argparse.Namespace) -> int:
    """``headq retrieve``: accuracy of the runs; JSON document and per-head CSV on request."""
    from tqdm import tqdm

    from headq_core.evaluation.calibrate import Calibration
    from workers.pipeline import execute

    spec = retrieval_spec(args)
    check_retrieval_runs(check_run_list(spec.get("runs") or []))  # what the cache cannot run, first
    blob = None
    if args.calibration:
        blob = Calibration.load(args.calibration).to_bytes()
        spec.setdefault("calibration_job", f"local:{Path(args.calibration).name}"[:64])
    elif any("headq" in r for r in spec.get("runs", [])):
        raise ValueError("calibration: HeadQ runs need --calibration DIR "
                         "(made by 'headq calibrate --save DIR')")
    JobSpec.model_validate(spec)  # a bad spec is refused before the progress bar is drawn
    bar = tqdm(total=1000, bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}")

    def progress(fraction: float, stage: str) -> None:
        bar.set_description_str(stage[:60])
        bar.update(int(fraction * 1000) - bar.n)

    try:
        doc, _ = execute(spec, calibration_blob=blob, progress=progress)
    finally:
        bar.close()
    print(accuracy_table(doc))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.out}")
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=HEAD_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(doc["heads"])
        print(f"wrote {args.csv}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``retrieve`` to the ``headq`` command."""
    r = subparsers.add_parser("retrieve", help="needle-in-a-haystack retrieval through the quantized cache",
                              formatter_class=HelpFormatter,
                              epilog=f"--runs presets (B = --bits, R = --rank):\n{preset_help()}")
    r.add_argument("--spec", help="retrieval job spec file (YAML or JSON); flags below are then ignored")
    r.add_argument("--model", help="hub id, local folder, .gguf file or builtin:smollm2-135m")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    r.add_argument("--dataset", default="sotu", help="builtin haystack corpus (sotu, shakespeare)")
    r.add_argument("--files", nargs="+", help="local text files as the haystack instead of --dataset")
    r.add_argument("--max-tokens", type=int, default=32768, help="haystack: at most this many tokens")
    r.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024],
                   help="context lengths (tokens)")
    r.add_argument("--depths", type=float, nargs="+", default=[0.0, 25.0, 50.0, 75.0, 100.0],
                   help="needle depths (percent of the haystack before the needle)")
    r.add_argument("--samples", type=int, default=1, help="prompts per (length, depth) cell")
    r.add_argument("--new-tokens", type=int, default=12, help="greedy answer tokens")
    r.add_argument("--template", default="auto", choices=("auto", "chat", "plain"),
                   help="auto: the chat template when the tokenizer has one")
    r.add_argument("--runs", default="headq", choices=tuple(PRESETS), help="preset list of runs (below)")
    r.add_argument("--bits", type=int, default=2, help="key bits (and value bits unless --value-bits)")
    r.add_argument("--value-bits", type=int, help="value bits of the full-kv preset (default: --bits)")
    r.add_argument("--group", type=int, default=32, help="quantization group size")
    r.add_argument("--residual", type=int, default=0, help="full-precision residual window")
    r.add_argument("--rank", type=int, help="HeadQ rank (default 8)")
    r.add_argument("--seed", type=int, default=0, help="prompt seed")
    r.add_argument("--calibration", help="calibration folder (from 'headq calibrate --save')")
    r.add_argument("--out", help="write the results document (JSON) here")
    r.add_argument("--csv", help="write the per-head needle attention rows as CSV here")
    r.set_defaults(func=retrieve_command)
