#!/usr/bin/env bash
# Wheels for scripts/bench_gpu.sh on the lent GPU box (Python 3.12, x86-64; it has torch, accelerate and
# transformers but no diffusers or bitsandbytes, and no network). Writes .whl/ (ignored by git), which the
# device call carries. bitsandbytes ships libraries for every CUDA/ROCm version (43 MB); only its CPU and
# CUDA 13.0 ones are kept, so the checkout plus wheels stay under the 64 MiB a call may carry.
#   bash scripts/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  diffusers==0.42.1 bitsandbytes==0.50.2 importlib_metadata==10.2.0 peft==0.21.2 tomli_w==1.2.0
whl=$(ls .whl/bitsandbytes-*.whl)
tmp=$(mktemp -d)
(cd "$tmp" && python3 -m zipfile -e "$OLDPWD/$whl" . \
  && find bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*_cpu.so' ! -name '*_cuda130.so' -delete \
  && python3 - <<'PY'
import csv, glob, os
record = glob.glob("*.dist-info/RECORD")[0]
rows = [r for r in csv.reader(open(record)) if os.path.exists(r[0])]
csv.writer(open(record, "w", newline="")).writerows(rows)
PY
)
rm "$whl"
(cd "$tmp" && python3 -m zipfile -c "$OLDPWD/$whl" $(ls))
rm -rf "$tmp"
du -ch .whl/*.whl | tail -1
