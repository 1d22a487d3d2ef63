#!/usr/bin/env bash
# Install (if needed), then run the demo: `headq serve` on http://127.0.0.1:8000 with a calibration and
# an evaluation of the real SmolLM2-135M queued. Usage: bash scripts/demo.sh [headq demo args]
# (--help answers at once, without reinstalling, once .venv exists).
set -euo pipefail
cd "$(dirname "$0")/.."
for arg in "$@"; do
    if [[ $arg == -h || $arg == --help ]] && [[ -x .venv/bin/headq ]]; then
        exec .venv/bin/headq demo --help
    fi
done
bash scripts/setup.sh
. .venv/bin/activate
exec headq demo "$@"
