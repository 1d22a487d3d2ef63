"""``headq demo``: the first five minutes. Starts ``headq serve`` (embedded SQLite, local executor),
queues a calibration of the real SmolLM2-135M on the bundled State of the Union corpus, an
evaluation that reads it (dense, K-only 2-bit, + HeadQ, the wrong-sign control, full-KV 2-bit with
and without the A² value policy) and a small needle-in-a-haystack retrieval job through the real
quantized cache (dense, 2-bit keys, + HeadQ; 1,024-token prompts, where the dense model finds every
needle: docs/results/retrieval.md), prints the dashboard URL, follows the jobs and ends with the
results tables.

Submissions carry idempotency keys, so running the demo again on the same database shows the same
jobs instead of queueing new ones.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

import httpx

from app.client import HeadQAPIError, HeadQClient
from headq_cli.helptext import HelpFormatter
from headq_cli.presets import A2_ONLINE, run_name
from headq_cli.progress import WindowProgress
from headq_cli.retrieval import accuracy_table
from headq_cli.table import results_table

MODEL = {"id": "builtin:smollm2-135m", "dtype": "float32", "device": "auto"}
K2 = {"bits": 2, "axis": "per_channel", "group_size": 32, "residual": 0}
K2_R = {**K2, "residual": 128}
V2_R = {"bits": 2, "axis": "per_token", "group_size": 32, "residual": 128}
HEADQ = {"rank": 8, "basis": "query_pca", "side_bits": 8}
DEMO_RUNS: list[dict[str, Any]] = [  # named as headq eval's presets name them (headq_cli.presets)
    {"name": run_name()},
    {"name": run_name(2), "key": K2},
    {"name": run_name(2, rank=8), "key": K2, "headq": HEADQ},
    {"name": run_name(2, rank=8, control="wrong sign"), "key": K2, "headq": {**HEADQ, "sign": -1}},
    {"name": run_name(2, 2), "key": K2_R, "value": V2_R},
    {"name": run_name(2, 2, a2=True), "key": K2_R, "value": V2_R, "value_policy": A2_ONLINE},
    {"name": run_name(2, 2, 8, a2=True), "key": K2_R, "value": V2_R, "headq": HEADQ,
     "value_policy": A2_ONLINE},
]


RETRIEVAL_RUNS = DEMO_RUNS[:3]  # dense, k2, k2+headq8


def retrieval_spec(lengths: list[int]) -> dict:
    """The demo's retrieval job spec (without its ``calibration_job``): needles at 0, 50 and 100%
    depth in prompts of ``lengths`` tokens."""
    return {"kind": "retrieval", "label": "demo: needle in a haystack through the 2-bit cache",
            "model": MODEL, "dataset": {"source": "builtin", "name": "sotu", "split": "eval"},
            "runs": RETRIEVAL_RUNS, "retrieval": {"lengths": lengths, "depths": [0, 50, 100]}}


def demo_specs(calibration_tokens: int, eval_tokens: int, window: int,
               head_windows: int) -> tuple[dict, dict]:
    """The calibration job spec and the evaluation job spec (without its ``calibration_job``)."""
    calibration = {"kind": "calibration", "label": "demo: SmolLM2-135M query basis", "model": MODEL,
                   "dataset": {"source": "builtin", "name": "sotu", "split": "calibration",
                               "window": window, "max_tokens": calibration_tokens},
                   "calibration": {"rank": 64}}
    evaluation = {"kind": "evaluation", "label": "demo: 2-bit KV cache, HeadQ and A² on SmolLM2-135M",
                  "model": MODEL,
                  "dataset": {"source": "builtin", "name": "sotu", "split": "eval", "window": window,
                              "max_tokens": eval_tokens, "head_windows": head_windows},
                  "runs": DEMO_RUNS}
    return calibration, evaluation


def _wait_ready(api: HeadQClient, server: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise OSError(f"headq serve exited with status {server.returncode} (port in use?)")
        try:
            if api.ready()[0]:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise OSError(f"headq serve did not become ready within {timeout_s:.0f} s")


def _follow(api: HeadQClient, job_ids: list[str], poll_s: float = 2.0) -> dict[str, str]:
    """Print each job's stage, progress, window n/N and ETA until all have finished; their final
    statuses."""
    last: dict[str, str] = {}
    meters: dict[str, WindowProgress] = {}
    while True:
        jobs = [api.get(job_id) for job_id in job_ids]
        for job in jobs:
            key = f"{job.kind:<11} {job.status:<9} {job.progress:5.0%}"
            meter = meters.setdefault(job.id, WindowProgress(len(job.spec.get("runs") or [])))
            line = f"{key}  {meter.text(job.progress, job.stage or '')}"
            if last.get(job.id) != f"{key} {job.stage}":
                print(f"[{time.strftime('%H:%M:%S')}] {line}" + (f"  {job.error}" if job.error else ""),
                      flush=True)
                last[job.id] = f"{key} {job.stage}"
        if all(job.status in ("succeeded", "failed", "cancelled") for job in jobs):
            return {job.id: job.status for job in jobs}
        time.sleep(poll_s)


def demo(args: argparse.Namespace) -> int:
    """Serve, queue the demo jobs, follow them; keep serving unless ``--exit-when-done``."""
    env = {**os.environ, "HEADQ_EXECUTOR": "local"}
    server = subprocess.Popen([sys.executable, "-m", "headq_cli.main", "serve", "--port", str(args.port),
                               "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{args.port}"
    try:
        with HeadQClient(base, token=os.environ.get("HEADQ_API_TOKEN")) as api:
            _wait_ready(api, server)
            calibration, evaluation = demo_specs(args.calibration_tokens, args.eval_tokens, args.window,
                                                 args.head_windows)
            key = f"demo-v1-{args.calibration_tokens}-{args.eval_tokens}-{args.window}-{args.head_windows}"
            calib_job = api.submit(calibration, idempotency_key=f"{key}-calibration")
            eval_job = api.submit({**evaluation, "calibration_job": calib_job.id},
                                  idempotency_key=f"{key}-evaluation")
            jobs = [calib_job.id, eval_job.id]
            if args.retrieval_lengths:
                lengths = "-".join(map(str, args.retrieval_lengths))
                retrieval = {**retrieval_spec(args.retrieval_lengths), "calibration_job": calib_job.id}
                jobs.append(api.submit(retrieval, idempotency_key=f"{key}-retrieval-{lengths}").id)
            print(f"\nHeadQ Lab is running. Dashboard: {base}/dashboard/?job={eval_job.id}\n"
                  f"API docs: {base}/docs   (Ctrl-C stops the server)\n", flush=True)
            statuses = _follow(api, jobs)
            if statuses[eval_job.id] == "succeeded":
                print(f"\n{results_table(api.results(eval_job.id))}\n", flush=True)
            if len(jobs) > 2 and statuses[jobs[2]] == "succeeded":
                print(f"Needle in a haystack ({base}/dashboard/retrieval?job={jobs[2]}):\n"
                      f"{accuracy_table(api.results(jobs[2]))}\n", flush=True)
        if any(status != "succeeded" for status in statuses.values()):
            print("headq demo: a job did not succeed; its error is shown above and in the dashboard",
                  file=sys.stderr)
            if args.exit_when_done:
                return 1
        print(f"Done. Results: {base}/dashboard/run?job={eval_job.id}", flush=True)
        if not args.exit_when_done:
            server.wait()
        return 0
    except HeadQAPIError as exc:
        raise ValueError(f"the server refused a demo job: {exc}") from exc
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    p = subparsers.add_parser("demo", help="serve and fill the dashboard with a real-model demo",
                              formatter_class=HelpFormatter)
    p.add_argument("--port", type=int, default=8000, help="port of headq serve")
    p.add_argument("--calibration-tokens", type=int, default=8192, help="calibration split tokens")
    p.add_argument("--eval-tokens", type=int, default=8192, help="evaluation split tokens")
    p.add_argument("--window", type=int, default=1024, help="tokens per window")
    p.add_argument("--head-windows", type=int, default=1,
                   help="windows over which per-head metrics are computed (perplexity uses all)")
    p.add_argument("--retrieval-lengths", type=int, nargs="*", default=[1024], metavar="TOKENS",
                   help="prompt lengths of the retrieval job (none: no retrieval job)")
    p.add_argument("--exit-when-done", action="store_true", help="stop the server once the jobs end")
    p.set_defaults(func=demo)
