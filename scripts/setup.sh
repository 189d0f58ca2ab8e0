#!/usr/bin/env bash
# Set up lora-kit in ./.venv (idempotent) for development (editable, with the test extras). The one thing
# it adds to a plain `pip install .` is the torch choice: it keeps an installed torch, and when torch is
# missing it installs the pinned CPU-capable release instead of letting pip resolve `torch` to a
# multi-GB CUDA build.
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
# Everything else, the CLIP tokenizer vocabulary included (package data), comes with the package.
pip install -q -e ".[test]"
python -c "import torch, diffusers, peft, accelerate; print(f'lora-kit env: torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft.__version__}, accelerate {accelerate.__version__}')"
