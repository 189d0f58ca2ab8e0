#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Tiny models gain little from threads, and two OpenMP threads on a busy 2-core box stall each other
# (measured: 5 training tests 8 s with one thread, minutes with two under load).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
python -m pytest tests -q "$@"
