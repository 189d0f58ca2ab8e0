#!/usr/bin/env bash
# Set up lora-kit in ./.venv (idempotent). Keeps an installed torch; when torch is missing it installs
# the pinned CPU-capable release instead of letting pip resolve `torch` to a multi-GB CUDA build.
#   PYTHON=python3.11 bash scripts/setup.sh       # choose the interpreter
#   LORA_KIT_TORCH="torch==2.13.0" ...             # choose the torch requirement used when none is installed
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" >/dev/null 2>&1; then
  pip install -q "${LORA_KIT_TORCH:-torch==2.13.0}"
fi
pip install -q -e ".[test]"
# Only the CLIP BPE vocabulary file of open_clip is used (offline tokenizer); its dependencies
# (torchvision, timm) would replace the CPU torch, so it is installed without them.
python -c "import importlib.metadata as m; m.distribution('open_clip_torch')" >/dev/null 2>&1 \
  || pip install -q --no-deps open_clip_torch
python -c "import torch, diffusers, peft, accelerate; print(f'lora-kit env: torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}, accelerate {accelerate.__version__}')"
