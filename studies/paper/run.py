"""Run the paper-reproduction study through the product's own job runner.

Each job of :mod:`studies.paper.specs` goes through ``workers.pipeline.execute`` (what a HeadQ Lab
worker runs for a queued job) and is written as ``<out>/<name>.json.gz`` =
``{"name", "family", "spec", "results", "artifact_base64", "wall_s", "host"}``: one item of an
importable results bundle (``studies.paper.bundle``). Jobs whose file exists are skipped, so a
run cut short resumes where it stopped; ``--deadline-s`` starts no job after that many seconds.

    # the published run (on the H200, see docs/results.md for the exact command)
    python -m studies.paper.run --out /root/study --device cuda
    # every job spec as a JSON file (what `headq submit` takes; calibration_job names the
    # calibration job: replace it by that job's id on your server)
    python -m studies.paper.run --out docs/results/paper/specs --write-specs
    # a smoke run of every job on the CPU here (tiny token counts, not for quoting)
    .venv/bin/python -m studies.paper.run --out /tmp/study-smoke --smoke
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import platform
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from studies.paper.specs import Sizes, StudyJob, study_jobs

SMOKE = Sizes(eval_tokens=256, calib_tokens=512, head_windows=1, batch=2, window=128)


def job_path(out: Path, job: StudyJob) -> Path:
    return out / f"{job.name}.json.gz"


def read_item(path: Path) -> dict[str, Any]:
    return json.loads(gzip.decompress(path.read_bytes()))


def write_item(path: Path, item: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(json.dumps(item).encode(), 6))
    tmp.replace(path)


def pack_families(out: Path, jobs: list[StudyJob], pack_dir: Path) -> None:
    """One ``<family>.tar`` per family of the finished job files (few files to fetch back)."""
    pack_dir.mkdir(parents=True, exist_ok=True)
    for family in sorted({j.family for j in jobs}):
        done = [job_path(out, j) for j in jobs if j.family == family and job_path(out, j).exists()]
        if done:
            with tarfile.open(pack_dir / f"{family}.tar", "w") as tar:
                for path in done:
                    tar.add(path, arcname=path.name)


def run_job(job: StudyJob, out: Path, device: str, cache: Any) -> dict[str, Any]:
    from workers.pipeline import execute

    spec = {**job.spec, "model": {**job.spec["model"], "device": device}}
    blob = None
    if job.depends is not None:
        blob = base64.b64decode(read_item(out / f"{job.depends}.json.gz")["artifact_base64"])
    started = time.perf_counter()
    last = [0.0]

    def progress(fraction: float, stage: str) -> None:
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"    {fraction:6.1%} {stage}", flush=True)

    results, artifact = execute(spec, calibration_blob=blob, progress=progress, model_cache=cache)
    return {"name": job.name, "family": job.family, "spec": spec, "results": results,
            "artifact_base64": None if artifact is None else base64.b64encode(artifact).decode(),
            "wall_s": round(time.perf_counter() - started, 1), "host": platform.node()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder of the job files (resumable)")
    parser.add_argument("--pack", default=None, help="also write one <family>.tar per family here")
    parser.add_argument("--families", nargs="*", default=None, help="only these families (and calibrations)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--deadline-s", type=float, default=None, help="start no job after this many seconds")
    parser.add_argument("--smoke", action="store_true", help="tiny token counts: checks the plumbing only")
    parser.add_argument("--every", type=int, default=1, help="keep dense and every N-th run (smoke runs)")
    parser.add_argument("--commit", default=None, help="the git commit the study runs (stored with each job)")
    parser.add_argument("--write-specs", action="store_true",
                        help="only write every job spec as <out>/<name>.json (for headq submit) and stop")
    args = parser.parse_args(argv)
    from workers.pipeline import ModelCache

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = study_jobs(SMOKE if args.smoke else Sizes())
    if args.write_specs:
        for job in jobs:
            (out / f"{job.name}.json").write_text(json.dumps(job.spec, indent=1) + "\n")
        print(f"wrote {len(jobs)} job specs to {out}")
        return 0
    wanted = set(args.families or {j.family for j in jobs}) | {"calibration"}
    chosen = [j for j in jobs if j.family in wanted]
    for job in chosen:
        if job.spec.get("runs") and args.every > 1:
            job.spec["runs"] = job.spec["runs"][:1] + job.spec["runs"][1::args.every]
    cache, started = ModelCache(), time.perf_counter()
    for job in chosen:
        path = job_path(out, job)
        if path.exists():
            continue
        elapsed = time.perf_counter() - started
        if args.deadline_s is not None and elapsed > args.deadline_s:
            print(f"deadline: {elapsed:.0f} s elapsed, {job.name} and later jobs left for the next run")
            break
        n_runs = len(job.spec.get("runs", []))
        print(f"[{elapsed:7.1f}s] {job.name}: {n_runs} runs", flush=True)
        try:
            item = run_job(job, out, args.device, cache)
        except Exception as exc:  # one failing job must not lose the others
            print(f"  FAILED {job.name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            continue
        write_item(path, {**item, "commit": args.commit})
        print(f"  done in {item['wall_s']} s ({item['wall_s'] / max(1, n_runs):.2f} s/run)", flush=True)
        if args.pack:
            pack_families(out, chosen, Path(args.pack))
    return 0


if __name__ == "__main__":
    sys.exit(main())
