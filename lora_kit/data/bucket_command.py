"""`lora-kit buckets DATASET`: the aspect-ratio bucket histogram of a dataset, from image headers only.

The flags are generated from the recipe's dataclasses (`BucketConfig`, `DatasetConfig`): defaults and
types come from the schema, and the values are checked by the same `bucket_problems` the recipe check
uses, so `lora-kit buckets` shows exactly what a recipe with the same [buckets] values would train.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import typing

from lora_kit.config.bucket_rules import bucket_problems
from lora_kit.config.schema import BucketConfig, DatasetConfig
from lora_kit.data.buckets import assign, bucket_histogram, buckets_for, mean_aspect_error, warn_small_images
from lora_kit.data.sources import scan_dataset
from lora_kit.errors import UserError

# Recipe field -> (flags, help). The short flags are the command's historical names; the long ones are
# the recipe keys (kohya's names). Defaults are never written here: they come from the dataclass.
BUCKET_FLAGS = {
    "resolution": (("--resolution",), "target area is resolution^2 (SDXL: 1024)"),
    "bucket_reso_steps": (("--steps", "--bucket-reso-steps"), "bucket sides are multiples of this"),
    "min_bucket_reso": (("--min", "--min-bucket-reso"), "smallest bucket side"),
    "max_bucket_reso": (("--max", "--max-bucket-reso"), "largest bucket side (SDXL: 2048)"),
    "bucket_no_upscale": (("--no-upscale", "--bucket-no-upscale"), "never enlarge small images"),
}
DATASET_FLAGS = {
    "kind": (("--kind",), "dataset layout"),
    "image_column": (("--image-column",), "save_to_disk datasets: the image column"),
    "caption_column": (("--caption-column",), "imagefolder / save_to_disk: the caption column"),
}


def _add_fields(p: argparse.ArgumentParser, cls: type, flags: dict) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in flags:
            continue
        names, text = flags[f.name]
        if isinstance(f.default, bool):
            p.add_argument(*names, dest=f.name, action="store_true", default=f.default, help=text)
            continue
        choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is typing.Literal else None
        p.add_argument(*names, dest=f.name, type=type(f.default), default=f.default, choices=choices,
                       help=f"{text} ([{cls.__name__}] {f.name}; default {f.default})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset folder (kohya N_name folders, imagefolder, save_to_disk) or builtin:NAME")
    _add_fields(p, BucketConfig, BUCKET_FLAGS)
    _add_fields(p, DatasetConfig, DATASET_FLAGS)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _flag_names(key: str) -> str:
    return "/".join(BUCKET_FLAGS[k][0][0] for k in key.split("/"))


def bucket_config(args: argparse.Namespace) -> BucketConfig:
    """The BucketConfig the flags describe, checked by the recipe's own rules (one line per problem)."""
    cfg = BucketConfig(**{name: getattr(args, name) for name in BUCKET_FLAGS})
    problems = bucket_problems(cfg)
    if problems:
        key, msg = problems[0]
        raise UserError(f"{_flag_names(key)}: {msg}")
    return cfg


def _bar(count: int, top: int, width: int = 30) -> str:
    return "#" * max(1, round(width * count / top)) if count else ""


def run(args) -> int:
    cfg = bucket_config(args)
    t0 = time.perf_counter()
    ds = DatasetConfig(path=args.dataset, **{name: getattr(args, name) for name in DATASET_FLAGS})
    scan = scan_dataset(ds)
    buckets = buckets_for(cfg)
    placements = [assign(r.size, buckets, cfg) for r in scan.records]
    small = warn_small_images([r.name for r in scan.records], placements, cfg)
    hist = bucket_histogram(placements)
    err = mean_aspect_error(placements)
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps({
            "images": len(placements), "skipped": scan.skipped.count, "upscaled_small": len(small),
            "mean_aspect_error": round(err, 6),
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
