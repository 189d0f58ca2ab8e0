"""Data pipeline throughput: header scan + bucket assignment, and latent caching on the tiny VAE.

    python scripts/bench_data.py                # 100k synthetic images, 256 cached latents
    python scripts/bench_data.py --n 20000 --latents 128

The synthetic dataset is real PNG/JPEG files (64 distinct encoded images of varied aspect, copied to N
files in kohya `1_name` folders, half with a caption sidecar), so the scan does exactly what it does on
user data: list folders, read sidecars, read headers + EXIF, check the file tail. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _blobs(count: int = 64) -> list[tuple[str, bytes]]:
    from PIL import Image

    rng = random.Random(0)
    out = []
    for i in range(count):
        w, h = rng.randint(300, 2400), rng.randint(300, 2400)
        buf = io.BytesIO()
        ext = "png" if i % 2 else "jpg"
        Image.new("RGB", (w, h), (i * 3, 80, 160)).save(buf, "PNG" if ext == "png" else "JPEG", quality=50)
        out.append((ext, buf.getvalue()))
    return out


def make_dataset(root: Path, n: int, folders: int = 10) -> None:
    blobs = _blobs()
    for f in range(folders):
        (root / f"1_class{f}").mkdir(parents=True)
    for i in range(n):
        ext, data = blobs[i % len(blobs)]
        folder = root / f"1_class{i % folders}"
        (folder / f"img{i:07d}.{ext}").write_bytes(data)
        if i % 2 == 0:
            (folder / f"img{i:07d}.txt").write_text(f"tag{i % 7}, tag{i % 11}", encoding="utf-8")


def bench_buckets(n: int, workdir: Path) -> list[tuple[str, int, float]]:
    from lora_kit.config.schema import BucketConfig, DatasetConfig
    from lora_kit.data.buckets import assign, buckets_for
    from lora_kit.data.sources import scan_dataset

    root = workdir / "headers"
    t0 = time.perf_counter()
    make_dataset(root, n)
    print(f"wrote {n} files in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    t0 = time.perf_counter()
    scan = scan_dataset(DatasetConfig(path=str(root)))
    t_scan = time.perf_counter() - t0
    rows = [("scan (list, sidecars, headers, tail check)", len(scan.records), t_scan)]
    for name, cfg in (("assign (bucket set, res 1024)", BucketConfig(resolution=1024, max_bucket_reso=2048)),
                      ("assign (no-upscale, res 1024)", BucketConfig(resolution=1024, max_bucket_reso=2048, bucket_no_upscale=True))):
        buckets = buckets_for(cfg)
        t0 = time.perf_counter()
        for r in scan.records:
            assign(r.size, buckets, cfg)
        rows.append((name, len(scan.records), time.perf_counter() - t0))
    return rows


def bench_latents(n: int, workdir: Path) -> list[tuple[str, int, float]]:
    import numpy as np
    import torch
    from PIL import Image

    from lora_kit.config.schema import BucketConfig, CacheConfig, DatasetConfig, Recipe
    from lora_kit.data.dataset import build_train_data
    from lora_kit.models.presets import build_components

    rng = np.random.default_rng(0)
    folder = workdir / "latents" / "1_x"
    folder.mkdir(parents=True)
    for i in range(n):
        w, h = int(rng.integers(48, 160)), int(rng.integers(48, 160))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    recipe = Recipe(
        dataset=DatasetConfig(path=str(workdir / "latents")),
        buckets=BucketConfig(resolution=64, bucket_reso_steps=16, min_bucket_reso=32, max_bucket_reso=128),
        cache=CacheConfig(dir=str(workdir / "cache")),
    )
    vae = build_components("tiny-sd15", seed=0)["vae"].eval()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.perf_counter()
    first = build_train_data(recipe, vae=vae)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = build_train_data(recipe, vae=vae)
    t_second = time.perf_counter() - t0
    assert first.stats.latent_cache["computed"] == n and second.stats.latent_cache["computed"] == 0
    t0 = time.perf_counter()
    for i in range(len(second.dataset)):
        second.dataset[i]
    t_read = time.perf_counter() - t0
    return [
        ("latent cache, first run (decode + tiny VAE encode + write)", n, t_first),
        ("latent cache, second run (all hits)", n, t_second),
        ("dataset[i] from cache (load + seeded draw + caption)", n, t_read),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="synthetic images for the bucketing benchmark")
    ap.add_argument("--latents", type=int, default=256, help="images for the latent caching benchmark")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workdir = Path(tempfile.mkdtemp(prefix="lora-kit-bench-data-"))
    os.environ["LORA_KIT_CACHE"] = str(workdir / "lk-cache")
    try:
        rows = bench_buckets(args.n, workdir) + bench_latents(args.latents, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"| step | images | seconds | images/s |  (CPU: {os.cpu_count()} cores)")
    print("|---|---:|---:|---:|")
    for name, count, seconds in rows:
        print(f"| {name} | {count} | {seconds:.2f} | {count / seconds:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
