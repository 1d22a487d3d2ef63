"""``headq submit / status / cancel / results / import``: the REST client side of the command line.

They talk to a running server (``--url``, default ``$HEADQ_URL`` or http://127.0.0.1:8000) through
``app.client.HeadQClient``; ``--token`` defaults to ``$HEADQ_API_TOKEN``. An API error prints the
server's message and exits with status 1.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from app.client import HeadQAPIError, HeadQClient

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = ("succeeded", "failed", "cancelled")


def load_spec(path: Path) -> dict[str, Any]:
    """A job spec from a YAML or JSON file (JSON is YAML); ValueError naming the file otherwise."""
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"spec: {path} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise ValueError(f"spec: {path} must hold a mapping (the job spec), got {type(spec).__name__}")
    return spec


def _client(args: argparse.Namespace) -> HeadQClient:
    return HeadQClient(args.url, token=args.token)


def _print_job(job: Any) -> None:
    print(job.model_dump_json(indent=2))


def submit(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    with _client(args) as api:
        job = api.submit(spec, idempotency_key=args.idempotency_key)
        while args.wait and job.status not in FINISHED:
            time.sleep(args.poll)
            job = api.get(job.id)
    _print_job(job)
    return 0 if not args.wait or job.status == "succeeded" else 1


def status(args: argparse.Namespace) -> int:
    with _client(args) as api:
        _print_job(api.get(args.job_id))
    return 0


def cancel(args: argparse.Namespace) -> int:
    with _client(args) as api:
        _print_job(api.cancel(args.job_id))
    return 0


def results(args: argparse.Namespace) -> int:
    if args.format == "parquet" and args.out is None:
        raise ValueError("out: parquet is binary; give --out FILE")
    with _client(args) as api:
        body = api.results(args.job_id, format=args.format)
    data = (json.dumps(body, indent=2) + "\n").encode() if isinstance(body, dict) else body
    if args.out is None:
        sys.stdout.write(data.decode())
    else:
        args.out.write_bytes(data)
        print(f"wrote {args.out} ({len(data)} bytes)", file=sys.stderr)
    return 0


def read_document(path: Path) -> dict[str, Any]:
    """A results document or bundle from a JSON file, gzip-compressed or not."""
    data = path.read_bytes()
    try:
        body = json.loads(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    except (OSError, ValueError) as exc:
        raise ValueError(f"file: {path} is not JSON or gzip-compressed JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValueError(f"file: {path} must hold a results document or a bundle object")
    return body


def bundle_chunks(body: dict[str, Any], max_bytes: int) -> list[dict[str, Any]]:
    """Split a bundle into bundles of whole jobs whose JSON stays under ``max_bytes`` each (a single
    bigger job travels alone); a plain document is one chunk."""
    if "jobs" not in body:
        return [body]
    chunks: list[list[Any]] = [[]]
    size = 0
    for item in body["jobs"]:
        n = len(json.dumps(item))
        if chunks[-1] and size + n > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += n
    return [{"jobs": items} for items in chunks if items]


def import_command(args: argparse.Namespace) -> int:
    with _client(args) as api:
        for path in args.files:
            chunks = bundle_chunks(read_document(path), args.max_bytes)
            for index, chunk in enumerate(chunks):
                for job in api.import_results(chunk):
                    print(f"{job.id}  {job.kind:<11} {job.label or ''}")
                print(f"{path}: part {index + 1}/{len(chunks)} imported", file=sys.stderr)
    return 0


def _api_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn an API error or an unreachable server into a message and exit status 1."""
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except HeadQAPIError as exc:
            print(f"headq: {exc}", file=sys.stderr)
        except httpx.TransportError as exc:
            print(f"headq: cannot reach the server at {args.url}: {exc}", file=sys.stderr)
        return 1
    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``submit``, ``status``, ``cancel``, ``results`` and ``import``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("HEADQ_URL", DEFAULT_URL), help="server URL")
    common.add_argument("--token", default=os.environ.get("HEADQ_API_TOKEN"), help="API token")

    p = subparsers.add_parser("submit", parents=[common], help="queue a job from a YAML/JSON spec file")
    p.add_argument("spec", type=Path)
    p.add_argument("--idempotency-key", help="resubmitting with the same key returns the same job")
    p.add_argument("--wait", action="store_true", help="wait until the job ends (exit 1 unless it succeeded)")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between polls with --wait")
    p.set_defaults(func=_api_errors(submit))
    for name, func, text in (("status", status, "show a job"), ("cancel", cancel, "cancel a job")):
        q = subparsers.add_parser(name, parents=[common], help=text)
        q.add_argument("job_id")
        q.set_defaults(func=_api_errors(func))
    r = subparsers.add_parser("results", parents=[common], help="download a job's results")
    r.add_argument("job_id")
    r.add_argument("--format", choices=("json", "csv", "parquet"), default="json")
    r.add_argument("--out", type=Path, help="file to write (default: standard output; required for parquet)")
    r.set_defaults(func=_api_errors(results))
    m = subparsers.add_parser("import", parents=[common],
                              help="store finished results (a document or bundle, .json or .json.gz) as jobs")
    m.add_argument("files", type=Path, nargs="+")
    m.add_argument("--max-bytes", type=int, default=16 * 1024 * 1024,
                   help="split a bundle into requests of at most this many bytes (whole jobs)")
    m.set_defaults(func=_api_errors(import_command))
