"""The ``headq`` command: ``serve``, ``worker``, ``submit``, ``status``, ``cancel``, ``results``, and the
core's ``calibrate`` / ``eval``.

Each command group lives in ``headq_cli/<group>.py`` with ``register(subparsers)`` setting
``func`` on its parsers; :data:`REGISTRARS` lists them (the ``headq demo`` command goes there too).
A bad argument or input ends with ``headq: <message>`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pydantic import ValidationError

from headq_cli import core, demo, jobs, retrieval, service
from headq_spec.errors import describe

REGISTRARS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    service.register,  # serve, worker
    jobs.register,     # submit, status, cancel, results
    core.register,     # calibrate, eval (headq_cli/core.py)
    demo.register,     # demo (headq_cli/demo.py)
    retrieval.register,  # retrieve (headq_cli/retrieval.py)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headq", description="HeadQ Lab: per-head KV-cache quantization "
                                     "distortion, measured and corrected.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"headq: {describe(exc) if isinstance(exc, ValidationError) else exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
