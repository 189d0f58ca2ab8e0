"""Aspect-ratio buckets: kohya's bucket sets, real crop offsets, no-upscale by area, pixel placement."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from PIL import Image

from lora_kit.config.schema import BucketConfig
from lora_kit.data.buckets import (
    Placement,
    apply_placement,
    assign,
    bucket_histogram,
    make_buckets,
    mean_aspect_error,
    no_upscale_bucket,
)


def test_bucket_set_512_matches_kohya():
    assert make_buckets(512, 64, 256, 1024) == [
        (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
        (512, 512),
        (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256),
    ]


def test_bucket_set_1024_capped_and_sdxl():
    capped = make_buckets(1024, 64, 256, 1024)  # kohya default max: every non-square bucket has a 1024 side
    assert len(capped) == 25 and (1024, 448) in capped and all(1024 in b for b in capped)
    sdxl = make_buckets(1024, 64, 256, 2048)
    assert len(sdxl) == 41
    assert sdxl[18:23] == [(896, 1152), (960, 1088), (1024, 1024), (1088, 960), (1152, 896)]
    assert (1536, 640) in sdxl and (2048, 512) in sdxl
    assert make_buckets(64, 16, 32, 128) == [(32, 96), (32, 112), (32, 128), (48, 80), (64, 64), (80, 48), (96, 32), (112, 32), (128, 32)]


def test_crop_offsets_are_the_real_trim_1200x500():
    # kohya's get_crop_ltrb records (left=0, top=10) here; the image is really trimmed 25 px on the left.
    p = assign((1200, 500), make_buckets(1024, 64, 256, 1024), BucketConfig(resolution=1024))
    assert p == Placement(bucket=(1024, 448), resized=(1075, 448), crop_left=25, crop_top=0, original=(1200, 500))
    assert p.flipped_crop_left() == 26
    # with an SDXL-style max the same image fits a bucket of the right area and exact aspect: no crop
    p = assign((1200, 500), make_buckets(1024, 64, 256, 2048), BucketConfig(resolution=1024, max_bucket_reso=2048))
    assert (p.bucket, p.resized, p.crop_left, p.crop_top) == ((1536, 640), (1536, 640), 0, 0)


def test_random_crop_is_seeded_and_in_range():
    cfg = BucketConfig(resolution=1024, random_crop=True)
    buckets = make_buckets(1024)
    p = assign((1200, 500), buckets, cfg, random.Random(0))
    assert (p.crop_left, p.crop_top) == (24, 0)
    lefts = {assign((1200, 500), buckets, cfg, random.Random(s)).crop_left for s in range(200)}
    assert min(lefts) >= 0 and max(lefts) <= 51 and len(lefts) > 20


def test_portrait_gets_the_transposed_bucket():
    buckets = make_buckets(512)
    cfg = BucketConfig(resolution=512)
    rng = random.Random(3)
    for _ in range(500):
        w, h = rng.randint(20, 5000), rng.randint(20, 5000)
        a, b = assign((w, h), buckets, cfg), assign((h, w), buckets, cfg)
        assert b.bucket == a.bucket[::-1] and (b.crop_top, b.crop_left) == (a.crop_left, a.crop_top)


def test_default_mode_invariants():
    buckets = make_buckets(512)
    cfg = BucketConfig(resolution=512)
    rng = random.Random(7)
    for _ in range(1000):
        size = (rng.randint(1, 4000), rng.randint(1, 4000))
        p = assign(size, buckets, cfg)
        assert p.bucket in buckets
        assert p.resized[0] >= p.bucket[0] and p.resized[1] >= p.bucket[1]
        assert 0 <= p.crop_left <= p.resized[0] - p.bucket[0] and 0 <= p.crop_top <= p.resized[1] - p.bucket[1]
        # cover resize: one side matches the bucket exactly
        assert p.resized[0] == p.bucket[0] or p.resized[1] == p.bucket[1]


def test_no_upscale_large_image_chooses_by_area_and_aspect():
    # kohya #731 / PR #2352: 3072x3000 at 1024 came out as a 960x960 bucket
    cfg = BucketConfig(resolution=1024, bucket_no_upscale=True)
    p = assign((3072, 3000), [], cfg)
    assert p == Placement((1024, 1024), (1049, 1024), 12, 0, (3072, 3000))
    assert no_upscale_bucket((1100, 1000), 1024, 64) == (1088, 960)
    assert no_upscale_bucket((1000, 1100), 1024, 64) == (960, 1088)


def test_no_upscale_small_image_keeps_its_pixels():
    cfg = BucketConfig(resolution=512, bucket_no_upscale=True)
    assert assign((300, 200), [], cfg) == Placement((256, 192), (300, 200), 22, 4, (300, 200))
    # a side shorter than one step: the only upscale, just to one step, never a 0 or negative bucket
    assert assign((40, 30), [], cfg) == Placement((64, 64), (85, 64), 10, 0, (40, 30))
    assert assign((1, 1), [], cfg).bucket == (64, 64)


def test_no_upscale_invariants():
    rng = random.Random(11)
    for res, step in ((512, 64), (1024, 64), (768, 32)):
        cfg = BucketConfig(resolution=res, bucket_reso_steps=step, bucket_no_upscale=True)
        for _ in range(1500):
            size = (rng.randint(1, 9000), rng.randint(1, 9000))
            p = assign(size, [], cfg)
            bw, bh = p.bucket
            assert bw >= step and bh >= step and bw % step == 0 and bh % step == 0
            assert bw * bh <= max(res * res, step * step * math.ceil(max(size) / min(size)))
            assert p.resized[0] >= bw and p.resized[1] >= bh
            if min(size) >= step:
                assert p.resized[0] <= size[0] and p.resized[1] <= size[1]  # never enlarged


def test_buckets_disabled_is_one_square():
    p = assign((1200, 500), [], BucketConfig(resolution=512, enabled=False))
    assert p == Placement((512, 512), (1229, 512), 358, 0, (1200, 500))


def test_histogram_and_mean_aspect_error():
    buckets, cfg = make_buckets(512), BucketConfig(resolution=512)
    ps = [assign(s, buckets, cfg) for s in [(1200, 500), (500, 500), (640, 480), (480, 640)]]
    assert bucket_histogram(ps) == {(448, 576): 1, (512, 512): 1, (576, 448): 1, (768, 320): 1}
    assert mean_aspect_error(ps) == pytest.approx((abs(576 / 448 - 640 / 480) + abs(448 / 576 - 480 / 640)) / 4)
    assert mean_aspect_error([]) == 0.0


def test_apply_placement_crop_and_flip():
    # column x of the source has red value 3x: the output shows which source columns were kept
    arr = np.zeros((32, 80, 3), dtype=np.uint8)
    arr[:, :, 0] = (np.arange(80) * 3)[None, :]
    src = Image.fromarray(arr)
    p = Placement(bucket=(64, 32), resized=(80, 32), crop_left=10, crop_top=0, original=(80, 32))
    out = np.asarray(apply_placement(src, p))
    assert out.shape == (32, 64, 3) and out[0, 0, 0] == 30 and out[0, 63, 0] == 219
    flipped = np.asarray(apply_placement(src, p, flip=True))
    assert flipped[0, 0, 0] == 219 and flipped[0, 63, 0] == 30
    # crop_left on the mirrored image: the flipped full image cropped at flipped_crop_left is the same
    full_flipped = np.asarray(src.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    left = p.flipped_crop_left()
    assert left == 6 and np.array_equal(full_flipped[:, left:left + 64], flipped)
    # with a resize, the crop box is mapped back to source pixels (2x downscale: 160 -> 80 wide)
    big = Image.fromarray(np.repeat(arr, 2, axis=1).repeat(2, axis=0))
    p2 = Placement(bucket=(64, 32), resized=(80, 32), crop_left=10, crop_top=0, original=(160, 64))
    down = np.asarray(apply_placement(big, p2)).astype(int)
    assert np.abs(down[5, 1:63, 0] - out[5, 1:63, 0]).max() <= 2
