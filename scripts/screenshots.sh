#!/usr/bin/env bash
# Regenerate the browser-test screenshots in docs/screenshots/ (jobs, run, compare, perplexity,
# predictor, empty state, API unreachable) by running the browser tests with HEADQ_SCREENSHOTS set;
# a plain test run writes them to a temporary folder instead. Usage: bash scripts/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
HEADQ_SCREENSHOTS="$PWD/docs/screenshots" python -m pytest -q -m browser tests/dashboard
