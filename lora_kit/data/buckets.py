"""Aspect-ratio bucketing, kohya semantics, with three fixes. Pure functions of sizes (no pixels here
except `apply_placement`).

- `make_buckets` is kohya's `make_bucket_resolutions`: the square `floor(resolution/step)*step`, then for
  every width from min to max in `step` increments the tallest height whose area fits resolution^2
  (capped at max), plus its transpose.
- `assign` picks a bucket, then resizes the image to *cover* it (aspect kept) and crops the excess.
  * default: the bucket with the closest aspect ratio (compared as log ratios so a portrait image gets
    exactly the transpose of the landscape choice; kohya compares plain ratios), larger area on a tie;
  * bucket_no_upscale: an image no larger than resolution^2 keeps its size, its bucket is its sides
    rounded *down* to `step` (at least one step); a larger image gets the multiple-of-step bucket within
    resolution^2 that maximises (bucket area / target area) x (fraction of the image left after the crop).

Fixes over kohya:
1. `Placement` records the real crop offsets in the resized image (kohya's `get_crop_ltrb` assumes a
   letterbox fit and records e.g. (0, 10) for a 1200x500 image whose real trim is 25 px on the left);
   SDXL's crop_top_left micro-conditioning needs the real numbers.
2. Nothing here drops an image: a bucket with fewer images than a batch is fine (see sampler.py).
3. no-upscale buckets are chosen by area and aspect together instead of rounding a side down after the
   fact (kohya #731/PR #2352: 3072x3000 at 1024 gave 960x960; here it gives 1024x1024), and a bucket
   side can never become 0 or negative (kohya #1836: -128x-128).
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from PIL import Image

log = logging.getLogger(__name__)

Size = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class Placement:
    """Where an image goes: resize to `resized`, crop `bucket` at (crop_left, crop_top)."""

    bucket: Size
    resized: Size
    crop_left: int
    crop_top: int
    original: Size

    def flipped_crop_left(self) -> int:
        """crop_left measured on the horizontally flipped image (what SDXL sees after flip_aug)."""
        return self.resized[0] - self.bucket[0] - self.crop_left


def make_buckets(resolution: int, steps: int = 64, min_reso: int = 256, max_reso: int = 1024) -> list[Size]:
    """kohya's bucket set for a target area of resolution^2, sorted by (width, height)."""
    if steps < 1 or resolution < steps:
        raise ValueError(f"need resolution >= bucket_reso_steps >= 1 (got {resolution}, {steps})")
    area = resolution * resolution
    side = int(math.sqrt(area) // steps) * steps
    resos = {(side, side)}
    width = min_reso
    while width <= max_reso:
        height = min(max_reso, int((area // width) // steps) * steps)
        if height >= min_reso:
            resos.add((width, height))
            resos.add((height, width))
        width += steps
    return sorted(resos)


@functools.lru_cache(maxsize=32)
def _aspect_table(buckets: tuple[Size, ...]) -> tuple[list[float], list[Size]]:
    # Sorted by log aspect, larger area first within equal aspects, so bisect + neighbour check suffices.
    order = sorted(buckets, key=lambda b: (math.log(b[0] / b[1]), -b[0] * b[1]))
    return [math.log(b[0] / b[1]) for b in order], order


def closest_bucket(size: Size, buckets: Sequence[Size]) -> Size:
    """The bucket whose aspect ratio is closest to the image's (log scale), larger area on a tie."""
    keys, order = _aspect_table(tuple(buckets))
    target = math.log(size[0] / size[1])
    i = bisect.bisect_left(keys, target)
    candidates = [j for j in (i - 1, i) if 0 <= j < len(order)]
    # the first bucket of a run of equal aspects is the largest; move back to it for the right neighbour
    best = min(candidates, key=lambda j: (abs(keys[j] - target), -order[j][0] * order[j][1]))
    while best > 0 and keys[best - 1] == keys[best]:
        best -= 1
    return order[best]


def _score(bw: int, bh: int, aspect: float, area: int) -> float:
    """(bucket area / target area) x (fraction of the image that survives the crop)."""
    ab = bw / bh
    return (bw * bh / area) * min(ab / aspect, aspect / ab)


def _landscape_no_upscale(w: float, h: float, area: int, step: int) -> Size:
    """Best multiple-of-step bucket for a landscape image (w >= h) that fits `area`, not larger than (w, h)."""
    aspect = w / h
    short = math.sqrt(area / aspect)
    best: tuple[float, Size] = (-1.0, (step, step))
    k0 = int(short // step)
    for k in {1, k0 - 1, k0, k0 + 1}:
        bh = k * step
        if k < 1 or bh > h:
            continue
        cap = min(int(w // step), area // bh // step) * step  # width may not exceed the image or the area
        for bw in (int(bh * aspect // step) * step, (int(bh * aspect // step) + 1) * step):
            bw = min(max(bw, step), cap)
            if bw >= step and bw * bh <= area:
                s = _score(bw, bh, aspect, area)
                if s > best[0] or (s == best[0] and bw * bh > best[1][0] * best[1][1]):
                    best = (s, (bw, bh))
    return best[1]


def no_upscale_bucket(size: Size, resolution: int, step: int) -> Size:
    """kohya's bucket_no_upscale bucket, with the area/aspect choice and a minimum of one step per side."""
    w, h = size
    area = resolution * resolution
    # A side shorter than one step cannot be cropped to a multiple of it: that image is scaled up (the
    # only upscale no-upscale ever does) just enough for its short side to reach one step.
    grow = max(1.0, step / w, step / h)
    sw, sh = w * grow, h * grow
    if sw * sh <= area:
        return max(step, int(sw // step) * step), max(step, int(sh // step) * step)
    if sw >= sh:
        return _landscape_no_upscale(sw, sh, area, step)
    bh, bw = _landscape_no_upscale(sh, sw, area, step)
    return bw, bh


def cover(size: Size, bucket: Size) -> Size:
    """Smallest aspect-preserving size that covers `bucket` (never smaller than it after rounding)."""
    w, h = size
    scale = max(bucket[0] / w, bucket[1] / h)
    return max(bucket[0], round(w * scale)), max(bucket[1], round(h * scale))


def crop_offsets(resized: Size, bucket: Size, rng: Optional[random.Random] = None) -> tuple[int, int]:
    """(left, top): centred, or uniformly random with a seeded rng (kohya random_crop)."""
    dx, dy = resized[0] - bucket[0], resized[1] - bucket[1]
    if rng is None:
        return dx // 2, dy // 2
    return rng.randint(0, dx), rng.randint(0, dy)


def assign(size: Size, buckets: Sequence[Size], cfg, rng: Optional[random.Random] = None) -> Placement:
    """Place an image of `size` (w, h) with a [buckets] config (BucketConfig); rng only for random_crop."""
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"image size must be positive, got {size}")
    if not cfg.enabled:
        side = max(cfg.bucket_reso_steps, cfg.resolution // cfg.bucket_reso_steps * cfg.bucket_reso_steps)
        bucket = (side, side)
    elif cfg.bucket_no_upscale:
        bucket = no_upscale_bucket(size, cfg.resolution, cfg.bucket_reso_steps)
    else:
        bucket = closest_bucket(size, buckets)
    resized = cover(size, bucket)
    small = size[0] * size[1] <= cfg.resolution * cfg.resolution and min(size) >= cfg.bucket_reso_steps
    if cfg.enabled and cfg.bucket_no_upscale and small:
        resized = tuple(size)  # kohya: a small image keeps its pixels and is only cropped to its bucket
    left, top = crop_offsets(resized, bucket, rng if cfg.random_crop else None)
    return Placement(bucket, resized, left, top, tuple(size))


def buckets_for(cfg) -> list[Size]:
    """The predefined bucket set of a BucketConfig (unused by bucket_no_upscale, which sizes per image)."""
    return make_buckets(cfg.resolution, cfg.bucket_reso_steps, cfg.min_bucket_reso, cfg.max_bucket_reso)


def smallest_bucket_area(cfg) -> int:
    """Pixels of the smallest bucket an image can get: an image with fewer is always enlarged."""
    if not cfg.enabled:
        side = max(cfg.bucket_reso_steps, cfg.resolution // cfg.bucket_reso_steps * cfg.bucket_reso_steps)
        return side * side
    if cfg.bucket_no_upscale:  # only a side shorter than one step is enlarged (to one step)
        return cfg.bucket_reso_steps * cfg.bucket_reso_steps
    return min(w * h for w, h in buckets_for(cfg))


def warn_small_images(names: Sequence[str], placements: Sequence[Placement], cfg, shown: int = 8) -> list[str]:
    """One warning naming the images smaller than the smallest bucket (they are upscaled); returns them."""
    area = smallest_bucket_area(cfg)
    small = [f"{n} ({p.original[0]}x{p.original[1]})" for n, p in zip(names, placements)
             if p.original[0] * p.original[1] < area]
    if small:
        more = f" and {len(small) - shown} more" if len(small) > shown else ""
        log.warning("%d image(s) smaller than the smallest bucket (%d pixels) will be upscaled and look blurry: %s%s",
                    len(small), area, ", ".join(small[:shown]), more)
    return small


def bucket_histogram(placements: Iterable[Placement]) -> dict[Size, int]:
    """{bucket: image count}, sorted by bucket."""
    return dict(sorted(Counter(p.bucket for p in placements).items()))


def mean_aspect_error(placements: Iterable[Placement]) -> float:
    """Mean |bucket aspect - image aspect| (the number kohya logs as "mean ar error")."""
    errors = [abs(p.bucket[0] / p.bucket[1] - p.original[0] / p.original[1]) for p in placements]
    return sum(errors) / len(errors) if errors else 0.0


def apply_placement(image, placement: Placement, flip: bool = False, crop: Optional[tuple[int, int]] = None):
    """Resize a PIL image to `placement.resized`, crop the bucket, optionally mirror it.

    `crop` overrides (left, top) (a per-epoch random crop). The crop box is mapped back to source pixels
    and resampled in one `resize(box=...)` call, so an extreme panorama never materialises its full
    resized copy. Lanczos is Pillow's antialiased filter, right for the usual downscale (kohya uses cv2
    INTER_AREA; OpenCV is not a dependency here).
    """
    left, top = crop if crop is not None else (placement.crop_left, placement.crop_top)
    bw, bh = placement.bucket
    sx, sy = placement.resized[0] / image.size[0], placement.resized[1] / image.size[1]
    if image.size == placement.resized:
        image = image.crop((left, top, left + bw, top + bh))
    else:
        box = (left / sx, top / sy, (left + bw) / sx, (top + bh) / sy)
        image = image.resize((bw, bh), Image.Resampling.LANCZOS, box=box)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image
