"""The paper-study report: tables, the budget frontier and PNG figures from the job files of
:mod:`studies.paper.run`, plus an importable results bundle.

    python -m studies.paper.report --jobs DIR --out docs/results/paper

writes ``bundle.json.gz`` (:mod:`studies.paper.bundle`), ``summary.json`` (every table as data,
:mod:`studies.paper.summary`), ``tables.md`` (:mod:`studies.paper.markdown`) and ``*.png``
(:mod:`studies.paper.figures`, drawn by :func:`studies.paper.render.render_png`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from studies.paper.bundle import bundle_bytes
from studies.paper.figures import figure_specs
from studies.paper.markdown import markdown
from studies.paper.records import read_jobs, run_records
from studies.paper.summary import clean, summarize


def main(argv: list[str] | None = None) -> int:
    """Read ``--jobs``, write every output under ``--out``; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", required=True, help="folder of the job files (*.json.gz)")
    parser.add_argument("--out", required=True, help="folder for bundle, summary, tables and figures")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures (no Chromium)")
    args = parser.parse_args(argv)
    items = read_jobs(Path(args.jobs))
    if not items:
        raise SystemExit(f"--jobs: no *.json.gz job file in {args.jobs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bundle.json.gz").write_bytes(bundle_bytes(list(items.values())))
    summary = clean(summarize(items))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "tables.md").write_text(markdown(summary, run_records(items.values())))
    if not args.no_figures:
        from studies.paper.render import chromium, render_png

        with chromium() as browser:
            for name, build in figure_specs(items, summary).items():
                (out / name).write_bytes(render_png(browser, build()))
    missing = summary["missing_jobs"]
    print(f"{len(items)} job files, missing {len(missing)}: {' '.join(missing) or 'none'}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
