"""``python -m workers.local_worker JOB_ID [--attempt N]``: the process the local executor spawns.

Exit status 0 whatever the job's outcome (it is recorded on the job row); non-zero only if the
runner itself could not run (the dispatcher then requeues or fails the attempt).
"""

from __future__ import annotations

import argparse
import logging

from workers.run_job import run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.local_worker", description=__doc__)
    parser.add_argument("job_id")
    parser.add_argument("--attempt", type=int,
                        help="the attempt the dispatcher claimed (default: claim a queued job here)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    status = run_job(args.job_id, attempt=args.attempt)
    logging.getLogger(__name__).info("job %s: %s", args.job_id, status or "nothing to run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
