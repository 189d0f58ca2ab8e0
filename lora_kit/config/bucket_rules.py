"""The [buckets] value rules, written once for the recipe check (config.checks) and `lora-kit buckets`."""

from __future__ import annotations

from lora_kit.config.schema import BucketConfig


def bucket_problems(b: BucketConfig) -> list[tuple[str, str]]:
    """(key, message) for each broken [buckets] value; key is a field name, or "a/b" for a pair."""
    out = []
    if b.bucket_reso_steps < 8 or b.bucket_reso_steps % 8:
        # bucket sides must be whole latents: the VAE downsamples by 8
        out.append(("bucket_reso_steps", f"expected a multiple of 8, got {b.bucket_reso_steps}"))
    elif b.resolution < b.bucket_reso_steps:
        out.append(("resolution", f"expected at least bucket_reso_steps ({b.bucket_reso_steps}), got {b.resolution}"))
    for key in ("min_bucket_reso", "max_bucket_reso"):  # the first bucket width is min_bucket_reso; heights cap at max
        if getattr(b, key) < 8 or getattr(b, key) % 8:
            out.append((key, f"expected a multiple of 8 (bucket sides are whole latents), got {getattr(b, key)}"))
    # bucket_no_upscale sizes each image's bucket itself and ignores min/max (as kohya does)
    if b.enabled and not b.bucket_no_upscale and not b.min_bucket_reso <= b.resolution <= b.max_bucket_reso:
        out.append(("min_bucket_reso/max_bucket_reso",
                    f"resolution {b.resolution} must lie between them ({b.min_bucket_reso}..{b.max_bucket_reso})"))
    return out
