#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md in one run (issues 3 and 8), on a machine that has torch, peft,
# accelerate and transformers but no diffusers or bitsandbytes: those (and importlib_metadata, tomli_w,
# open_clip_torch for the CLIP vocabulary, peft 0.21) come as wheels from .whl/, written by
# scripts/fetch_gpu_wheels.sh (see docs/benchmarks.md).
#   bash scripts/bench_gpu.sh [OUTDIR]
set -uo pipefail
out=${1:-${OUT:-/tmp/bench-gpu}}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 - <<'PY' 2>&1 | tee -a "$out/gpu.txt" || exit 1
import importlib.metadata as md, torch, bitsandbytes as bnb
print("versions", {n: md.version(n) for n in ("torch", "diffusers", "peft", "transformers", "accelerate", "bitsandbytes")})
p = torch.nn.Parameter(torch.randn(8192, device="cuda"))
p.grad = torch.randn_like(p)
bnb.optim.AdamW8bit([p]).step()
print("bitsandbytes AdamW8bit step on", torch.cuda.get_device_name())
PY
timeout 270 python3 scripts/bench_train.py --sd15 --resolution 512 --batch 4 --steps 20 --warmup 3 2>&1 | tee "$out/sd15.txt"
timeout 300 python3 scripts/bench_train.py --sdxl --resolution 1024 --batch 1 --steps 20 --warmup 3 2>&1 | tee "$out/sdxl.txt"
