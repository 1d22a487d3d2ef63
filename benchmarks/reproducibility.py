"""Reproducibility: the same short SmolLM2-135M evaluation run in fresh processes that differ in one
setting (nothing, the number of CPU threads, the CPU's vector kernels), compared run by run.

2-bit rounding is discontinuous: a float-level difference in a key (another summation order in a
matmul) can move a code, and a moved code moves the perplexity in the third or fourth decimal. This
script measures which settings change anything. Prints a table and writes JSON.

    .venv/bin/python benchmarks/reproducibility.py --tokens 4096 --out benchmarks/results/reproducibility.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, sys, torch
from headq_core.config import QuantConfig, RunSpec
from headq_core.evaluation.corpus import CorpusSpec
from headq_core.evaluation.evaluate import evaluate
from headq_core.models.loading import BUILTIN_SMOLLM2, load_model
tokens, window = int(sys.argv[1]), int(sys.argv[2])
lm = load_model(BUILTIN_SMOLLM2, device="cpu")
k2 = QuantConfig(bits=2, axis="per_channel", group_size=32, residual=0)
kv2 = QuantConfig(bits=2, axis="per_token", group_size=32, residual=128)
runs = [RunSpec("dense"), RunSpec("k2", key=k2),
        RunSpec("kv2", key=QuantConfig(bits=2, axis="per_channel", group_size=32, residual=128), value=kv2)]
doc = evaluate(lm, CorpusSpec(split="eval"), runs, window=window, max_tokens=tokens, heads=False)
print(json.dumps({"threads": torch.get_num_threads(),
                  "runs": {r["name"]: r["perplexity"] for r in doc["runs"]},
                  "window_nll": {r["name"]: r["window_nll"] for r in doc["runs"]}}))
"""

SETTINGS = {
    "2 threads, run 1": {"OMP_NUM_THREADS": "2"},
    "2 threads, run 2": {"OMP_NUM_THREADS": "2"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    # what another x86 machine does: torch's and MKL's AVX2 kernels instead of AVX-512
    "AVX2 kernels": {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "avx2",
                     "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}


def run_child(env_extra: dict[str, str], tokens: int, window: int) -> dict:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", CHILD, str(tokens), str(window)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--out", default="benchmarks/results/reproducibility.json")
    args = parser.parse_args()
    results = {}
    for label, env in SETTINGS.items():
        started = time.perf_counter()
        results[label] = run_child(env, args.tokens, args.window)
        results[label]["seconds"] = round(time.perf_counter() - started, 1)
    reference = results["2 threads, run 1"]
    print(f"{'setting':20s} " + " ".join(f"{name:>12s}" for name in reference["runs"]) + "  bit-identical")
    for label, got in results.items():
        same = got["window_nll"] == reference["window_nll"]
        cells = " ".join(f"{ppl:12.6f}" for ppl in got["runs"].values())
        print(f"{label:20s} {cells}  {same}")
        got["bit_identical_to_run_1"] = same
    summary = {"command": " ".join(sys.argv), "tokens": args.tokens, "window": args.window,
               "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "python": platform.python_version()},
               "date": time.strftime("%Y-%m-%d"), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
