"""`lora-kit buckets DATASET`: the aspect-ratio bucket histogram of a dataset, from image headers only."""

from __future__ import annotations

import argparse
import json
import time

from lora_kit.config.schema import BucketConfig, DatasetConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset folder (kohya N_name folders, imagefolder, save_to_disk) or builtin:NAME")
    p.add_argument("--resolution", type=int, default=512, help="target area is resolution^2 (SDXL: 1024)")
    p.add_argument("--steps", type=int, default=64, help="bucket_reso_steps: bucket sides are multiples of this")
    p.add_argument("--min", dest="min_reso", type=int, default=256, help="min_bucket_reso")
    p.add_argument("--max", dest="max_reso", type=int, default=1024, help="max_bucket_reso")
    p.add_argument("--no-upscale", action="store_true", help="bucket_no_upscale: never enlarge small images")
    p.add_argument("--kind", default="auto", choices=["auto", "folder", "imagefolder", "hf_disk"])
    p.add_argument("--image-column", default="image")
    p.add_argument("--caption-column", default="text")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _bar(count: int, top: int, width: int = 30) -> str:
    return "#" * max(1, round(width * count / top)) if count else ""


def run(args) -> int:
    from lora_kit.data.buckets import assign, bucket_histogram, make_buckets, mean_aspect_error
    from lora_kit.data.sources import scan_dataset
    from lora_kit.errors import UserError

    if args.steps < 1 or args.resolution < args.steps:
        raise UserError(f"--resolution ({args.resolution}) must be >= --steps ({args.steps}) >= 1")
    if not args.no_upscale and not args.min_reso <= args.resolution <= args.max_reso:
        raise UserError(f"--resolution {args.resolution} must lie between --min {args.min_reso} and --max {args.max_reso}")
    t0 = time.perf_counter()
    ds = DatasetConfig(
        path=args.dataset, kind=args.kind, image_column=args.image_column, caption_column=args.caption_column
    )
    scan = scan_dataset(ds)
    cfg = BucketConfig(
        resolution=args.resolution, bucket_reso_steps=args.steps, min_bucket_reso=args.min_reso,
        max_bucket_reso=args.max_reso, bucket_no_upscale=args.no_upscale,
    )
    buckets = make_buckets(cfg.resolution, cfg.bucket_reso_steps, cfg.min_bucket_reso, cfg.max_bucket_reso)
    placements = [assign(r.size, buckets, cfg) for r in scan.records]
    hist = bucket_histogram(placements)
    err = mean_aspect_error(placements)
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps({
            "images": len(placements), "skipped": scan.skipped.count, "mean_aspect_error": round(err, 6),
            "buckets": [{"width": w, "height": h, "count": c} for (w, h), c in hist.items()],
        }, indent=2))
        return 0
    top = max(hist.values())
    print(f"{'bucket':>11}  {'aspect':>6}  {'images':>6}")
    for (w, h), count in hist.items():
        print(f"{w:>5}x{h:<5}  {w / h:6.3f}  {count:6d}  {_bar(count, top)}")
    print(f"{len(placements)} images in {len(hist)} buckets ({scan.kind}), {scan.skipped.count} skipped, "
          f"mean aspect error {err:.4f}, {seconds:.1f} s")
    return 0
