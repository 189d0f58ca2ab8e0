#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md (issue 15) in one device call of at most 8 minutes, one table per model:
#   SD1.5-sized, 512 px, batch 16 and 32: floor, bare, reference, lora-kit default, lora-kit fast (+ MFU);
#   SDXL-sized, 1024 px: lean (batch 1, gradient checkpointing) and fast (regional compile, fused AdamW,
#   checkpointing, batch 4).
# The GPU box has torch, peft, accelerate and transformers but no diffusers or bitsandbytes: those (and
# importlib_metadata, tomli_w, peft 0.21) come as wheels from .whl/, written by scripts/fetch_gpu_wheels.sh.
# tests/test_bench_scripts.py runs the same bench_train.py matrix on the tiny model on the CPU.
#   bash scripts/bench_gpu.sh [OUTDIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/bench-gpu}}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
work=${BENCH_WORK:-/tmp/bench-work}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
git rev-parse --short HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$out/gpu.txt"
python3 -c "import importlib.metadata as md; print({n: md.version(n) for n in ('torch', 'diffusers', 'peft', 'transformers', 'accelerate', 'bitsandbytes')})" \
  2>&1 | tee -a "$out/gpu.txt" || exit 1
# Each part has its own deadline, so a slow part still leaves the other's table (and the partial rows).
timeout 290 python3 scripts/bench_train.py --sd15 --resolution 512 --batches 16,32 --steps 20 --warmup 3 \
  --workdir "$work/sd15" --timeout 120 2>&1 | tee "$out/sd15.txt"
timeout 170 python3 scripts/bench_train.py --sdxl --resolution 1024 --batches 1 --loops default --steps 20 --warmup 3 \
  --workdir "$work/sdxl" --timeout 120 --set train.gradient_checkpointing=true 2>&1 | tee "$out/sdxl-lean.txt"
timeout 150 python3 scripts/bench_train.py --sdxl --resolution 1024 --batches 4 --loops fast --steps 20 --warmup 3 \
  --workdir "$work/sdxl" --timeout 140 --set train.gradient_checkpointing=true 2>&1 | tee "$out/sdxl-fast.txt"
