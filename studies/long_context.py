"""Does 2-bit damage grow with context? SmolLM2-135M on its full 8,192-token context (issue 18).

Built-in State of the Union corpus (calibration: addresses up to 2001; evaluation: 2002-2021, read
as one stream), ``--windows`` spread windows of ``--window`` tokens, runs dense / k2 / k2+HeadQ r16
(query-PCA basis from a rank-16 calibration) / kv2, on the blockwise O(L)-memory attention path
with per-head metrics on 256 sampled query rows per window. Writes the results document and a
summary (perplexity with 95% intervals, excess NLL per position, the position plot as SVG).

    .venv/bin/python -m studies.long_context --device cuda          # the 8,192-token run
    .venv/bin/python -m studies.long_context --window 512 --windows 2 --calib-tokens 2048 \\
        --out /tmp/long-context.json                                 # a CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from headq_core.config import HeadQConfig, QuantConfig, RunSpec
from headq_core.evaluation.calibrate import calibrate
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.models.loading import BUILTIN_SMOLLM2, load_model
from testkit.provenance import provenance

K2 = QuantConfig(bits=2, axis="per_channel", group_size=32, residual=128)
V2 = QuantConfig(bits=2, axis="per_token", group_size=32, residual=128)
RUNS = [RunSpec("dense"), RunSpec("k2", key=K2), RunSpec("k2+headq16", key=K2, headq=HeadQConfig(rank=16)),
        RunSpec("kv2", key=K2, value=V2)]
GROUPS = 8  # rows of the markdown's position table (the 64 buckets merged, token-weighted)
COLOURS = ("#ff7f0e", "#2ca02c", "#d62728", "#9467bd")


def coarse(block: dict, run: str, groups: int = GROUPS) -> list[tuple[int, int, float]]:
    """(first position, last position, token-weighted mean excess NLL) of ``groups`` runs of buckets."""
    n = len(block["tokens"])
    out = []
    for g in range(groups):
        lo, hi = g * n // groups, (g + 1) * n // groups
        if lo == hi:
            continue
        tokens = block["tokens"][lo:hi]
        weighted = sum(t * v for t, v in zip(tokens, block["excess_nll"][run][lo:hi], strict=True))
        excess = weighted / sum(tokens)
        out.append((block["edges"][lo], block["edges"][hi] - 1, excess))
    return out


def signed(value: float) -> str:
    """``+0.1234``, or ``0`` for what rounds to zero (no ``-0.0000``)."""
    return f"{value:+.4f}" if abs(value) >= 5e-5 else "0"


def position_svg(block: dict, runs: list[str], width: int = 640, height: int = 320) -> str:
    """Excess NLL against token position (log x), one polyline per run, as a standalone SVG."""
    import math

    edges, pad = block["edges"], 50
    xs = [math.log10(max(e, 1)) for e in edges[:-1]]
    values = [v for r in runs for v in block["excess_nll"][r]]
    y_lo, y_hi = min(0.0, *values), max(0.0, *values) or 1.0

    def px(x: float) -> float:
        return pad + (x - xs[0]) / ((xs[-1] - xs[0]) or 1.0) * (width - 2 * pad)

    def py(y: float) -> float:
        return height - pad - (y - y_lo) / ((y_hi - y_lo) or 1.0) * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<line x1="{pad}" y1="{py(0):.1f}" x2="{width - pad}" y2="{py(0):.1f}" stroke="#999"/>',
             f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">'
             'token position (log scale)</text>',
             f'<text x="12" y="{height / 2}" transform="rotate(-90 12 {height / 2})" text-anchor="middle">'
             f'excess NLL over {block["baseline"]} [nats/token]</text>']
    for decade in range(math.ceil(xs[0]), math.floor(xs[-1]) + 1):
        parts.append(f'<text x="{px(decade):.1f}" y="{height - pad + 14}" '
                     f'text-anchor="middle">{10**decade}</text>')
    for y in (y_lo, y_hi):
        parts.append(f'<text x="{pad - 4}" y="{py(y):.1f}" text-anchor="end">{y:.3g}</text>')
    for i, run in enumerate(runs):
        excess = block["excess_nll"][run]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, excess, strict=True))
        colour = COLOURS[i % len(COLOURS)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
        parts.append(f'<text x="{width - pad + 4}" y="{pad + 14 * i}" fill="{colour}">{run}</text>')
    return "\n".join(parts + ["</svg>"]) + "\n"


def summary(doc: dict, command: str, seconds: float, svg_name: str) -> str:
    """The markdown summary: command, setup, run table, excess NLL per position range, the plot."""
    ds, block = doc["dataset"], doc["position_nll"]
    attention = ds["attention"]
    rows = attention.get("head_rows")
    sampled = f"{len(rows)} sampled query rows per window" if rows else "every query row"
    quantized = [r["name"] for r in doc["runs"] if r["name"] != block["baseline"]]
    lines = [f"# Long context: {doc['model']['id']}, {ds['window']}-token windows", "",
             f"Command: `{command}`  ", f"Device: {doc['device']}, dtype {doc['dtype']}, {seconds:.0f} s; "
             f"versions {doc['versions']}", "",
             f"{ds['windows']} spread windows of {ds['window']} tokens ({ds['tokens_scored']} scored), "
             f"built-in `{ds['name']}` `{ds['split']}`; attention path: {attention['head_windows']} "
             f"(windows with per-head metrics, on {sampled}), {attention['other_windows']} (others)",
             "", "| run | perplexity [95% CI] | excess perplexity [95% CI] | effective K / V bits |",
             "| --- | --- | --- | --- |"]
    for r in doc["runs"]:
        def ci(field: str, row: dict = r) -> str:
            value, interval = row.get(field), row.get(f"{field}_ci")
            if value is None:
                return "-"
            return f"{value:.4g}" + (f" [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else "")
        bits = r["effective_bits"]
        lines.append(f"| {r['name']} | {ci('perplexity')} | {ci('excess_perplexity')} | "
                     f"{bits['key']:.3g} / {bits['value']:.3g} |")
    lines += ["", f"Excess NLL over {block['baseline']} [nats/token] by token position (the 64 log-spaced "
              "buckets of `position_nll` merged into ranges, token-weighted):", "",
              "| positions | " + " | ".join(quantized) + " |", "| --- |" + " --- |" * len(quantized)]
    ranges = {run: coarse(block, run) for run in quantized}
    for i, (lo, hi, _) in enumerate(ranges[quantized[0]]):
        lines.append(f"| {lo}–{hi} | " + " | ".join(signed(ranges[run][i][2]) for run in quantized) + " |")
    lines += ["", f"![excess NLL against token position]({svg_name})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=BUILTIN_SMOLLM2, help="model id, folder or .gguf file")
    parser.add_argument("--window", type=int, default=8192)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--calib-tokens", type=int, default=65536)
    parser.add_argument("--calib-window", type=int, default=1024)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default="docs/results/long-context.json")
    args = parser.parse_args()
    origin = provenance()
    started = time.perf_counter()
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    cal = calibrate(lm, CorpusSpec(split="calibration"), window=args.calib_window,
                    max_tokens=args.calib_tokens, rank=16)
    doc = evaluate(lm, CorpusSpec(split="eval"), RUNS, cal, window=args.window,
                   max_tokens=args.windows * args.window, placement="spread")
    seconds = time.perf_counter() - started
    command = "python -m studies.long_context " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {**origin, "command": command, "seconds": round(seconds), "results": doc}
    out.write_text(json.dumps(record) + "\n")
    svg = out.with_name(out.stem + "-position.svg")
    quantized = [r.name for r in RUNS if not r.is_dense]
    svg.write_text(position_svg(doc["position_nll"], quantized))
    md = out.with_suffix(".md")
    md.write_text(summary(doc, command, seconds, svg.name))
    print(md.read_text())
    print(f"wrote {out}, {md}, {svg}")


if __name__ == "__main__":
    main()
