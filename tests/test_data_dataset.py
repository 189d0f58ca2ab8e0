"""build_train_data / LoraDataset: items, repeats, reg images, stats, flip, epochs, latents, DataLoader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lora_kit.config.schema import BucketConfig, CacheConfig, DatasetConfig, Recipe
from lora_kit.data.dataset import build_train_data, collate, render_pixels, split_validation
from lora_kit.data.sampler import BucketBatchSampler


def _noise(path: Path, size, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


@pytest.fixture
def world(tmp_path) -> Path:
    data = tmp_path / "data"
    _noise(data / "10_star" / "s1.png", (64, 64), 1)
    (data / "10_star" / "s1.txt").write_text("star, red, outline, centered", encoding="utf-8")
    _noise(data / "10_star" / "s2.png", (101, 48), 2)  # bucket (80, 48), 21 px of horizontal slack
    (data / "10_star" / "s2.txt").write_text("star, blue, filled", encoding="utf-8")
    _noise(data / "1_circle" / "c1.png", (64, 128), 3)  # no caption: class tokens "circle"
    (data / "1_circle" / "broken.png").write_text("not a png", encoding="utf-8")
    _noise(tmp_path / "reg" / "r1.png", (64, 64), 4)
    _noise(tmp_path / "reg" / "r2.png", (64, 64), 5)
    return tmp_path


def _recipe(world: Path, **dataset) -> Recipe:
    ds = dict(path=str(world / "data"), trigger_word="sks", shuffle_tags=True, keep_tokens=1,
              reg_path=str(world / "reg"), reg_repeats=3, reg_class_tokens="a star")
    ds.update(dataset)
    return Recipe(
        seed=42,
        dataset=DatasetConfig(**ds),
        buckets=BucketConfig(resolution=64, bucket_reso_steps=16, min_bucket_reso=32, max_bucket_reso=128),
        cache=CacheConfig(dir=str(world / "cache")),
    )


def test_items_repeats_reg_and_stats(world):
    data = build_train_data(_recipe(world))
    ds = data.dataset
    assert len(ds) == 10 + 10 + 1 + 3 + 3 and len(data.bucket_ids) == len(ds)
    st = data.stats
    assert (st.num_train_images, st.num_reg_images, st.num_train_files, st.num_reg_files) == (21, 6, 3, 2)
    assert st.folders == {"10_star": {"n_repeats": 10, "img_count": 2}, "1_circle": {"n_repeats": 1, "img_count": 1}}
    assert st.reg_folders == {"reg": {"n_repeats": 3, "img_count": 2}}
    assert st.tag_frequency == {
        "10_star": {"star": 2, "blue": 1, "centered": 1, "filled": 1, "outline": 1, "red": 1},
        "1_circle": {"circle": 1},
        "reg": {"a star": 2},
    }
    assert st.skipped == 1 and list(st.skipped_files) == ["broken.png"]
    assert st.bucket_histogram == {(48, 80): 1, (64, 64): 3, (80, 48): 1}
    assert st.bucket_info["buckets"][1] == {"resolution": [64, 64], "count": 16}
    assert st.missing_captions == 3 and st.static_captions is False and st.latent_cache is None
    assert data.buckets == [(48, 80), (64, 64), (80, 48)]

    item = ds[0]  # first repeat of 10_star/s1.png
    assert set(item) == {"pixel_values", "caption", "original_size", "crop_top_left", "target_size", "is_reg", "index"}
    assert item["pixel_values"].shape == (3, 64, 64) and item["pixel_values"].dtype == torch.float32
    assert -1.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
    assert item["caption"].startswith("sks, star, ") and item["is_reg"] is False
    s2 = ds[10]
    assert (s2["original_size"], s2["target_size"], s2["crop_top_left"]) == ((48, 101), (48, 80), (0, 10))
    assert s2["pixel_values"].shape == (3, 48, 80)
    circle = ds[20]
    assert circle["caption"] == "sks, circle" and circle["original_size"] == (128, 64)
    reg = ds[21]
    # issue 19: the trigger word is the concept's; a prior (reg) image keeps its own caption
    assert reg["is_reg"] is True and reg["caption"] == "a star"
    assert [data.buckets[b] for b in data.bucket_ids[9:12]] == [(64, 64), (80, 48), (80, 48)]


def test_empty_tag_separator_is_the_default_comma_everywhere(world):
    """tag_separator = "" means "," to the caption transform; the tag count read it raw (str.split("") raised)."""
    st = build_train_data(_recipe(world, tag_separator="")).stats
    assert st.tag_frequency["10_star"] == {"star": 2, "blue": 1, "centered": 1, "filled": 1, "outline": 1, "red": 1}


def test_reg_balance_matches_the_training_samples_like_kohya(world):
    data = build_train_data(_recipe(world, reg_balance=True))  # 21 training samples, 2 reg images at 3 repeats
    reg = [s.record for s in data.dataset.samples if s.record.is_reg]
    assert [r.repeats for r in reg] == [11, 10] and data.stats.num_reg_images == 21
    assert len(data.dataset) == 42 and sum(item["is_reg"] for item in (data.dataset[i] for i in range(21, 42))) == 21


def test_balance_reg_leaves_out_a_surplus():
    from lora_kit.data.dataset import balance_reg
    from lora_kit.data.sources import ImageRecord

    recs = [ImageRecord(f"r{i}.png", None, None, 2, True, "reg", (64, 64)) for i in range(5)]
    assert [r.repeats for r in balance_reg(recs, 5)] == [2, 2, 2]  # kohya: stop once 5 samples are reached
    assert [r.repeats for r in balance_reg(recs, 13)] == [3, 3, 3, 2, 2]
    assert balance_reg([], 10) == [] and balance_reg(recs, 0) == []


def test_captions_vary_by_epoch_and_are_reproducible(world):
    ds = build_train_data(_recipe(world)).dataset
    epoch0 = [ds[i]["caption"] for i in range(10)]
    assert epoch0 == [ds[i]["caption"] for i in range(10)]
    ds.set_epoch(1)
    epoch1 = [ds[i]["caption"] for i in range(10)]
    assert epoch1 != epoch0 and all(c.startswith("sks, star, ") for c in epoch1)
    again = build_train_data(_recipe(world)).dataset
    again.set_epoch(1)
    assert [again[i]["caption"] for i in range(10)] == epoch1


def test_flip_mirrors_pixels_and_crop_left(world):
    ds = build_train_data(_recipe(world, flip_aug=True, reg_path="")).dataset
    rec, pl = ds.samples[1].record, ds.samples[1].placement
    assert (pl.bucket, pl.resized, pl.crop_left, pl.crop_top) == ((80, 48), (101, 48), 10, 0)
    plain = render_pixels(rec, pl, False)
    flips = 0
    for i in range(10, 20):  # the ten repeats of s2.png
        item = ds[i]
        if torch.equal(item["pixel_values"], torch.flip(plain, dims=[2])):
            flips += 1
            assert item["crop_top_left"] == (0, 11)  # 101 - 80 - 10: the crop seen on the mirrored image
        else:
            assert torch.equal(item["pixel_values"], plain) and item["crop_top_left"] == (0, 10)
    assert 0 < flips < 10


def test_random_crop_changes_per_epoch_in_pixel_mode(world):
    recipe = _recipe(world, reg_path="")
    recipe.buckets.random_crop = True
    ds = build_train_data(recipe).dataset
    tops = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        top, left = ds[20]["crop_top_left"]  # the circle: 16 px of vertical slack
        assert left == 0 and 0 <= top <= 16
        tops.add(top)
    assert len(tops) > 3


def test_cached_latents_are_seeded_draws(world):
    from lora_kit.data.cache import LatentCache, module_identity
    from lora_kit.models.presets import build_components

    vae = build_components("tiny-sd15", seed=0)["vae"].eval()
    data = build_train_data(_recipe(world, flip_aug=True), vae=vae)
    ds = data.dataset
    assert data.stats.latent_cache == {"total": 10, "cached": 0, "computed": 10, "failed": 0}
    item = ds[10]
    assert set(item) >= {"latents", "caption"} and "pixel_values" not in item
    assert item["latents"].shape == (4, 12, 20)
    assert torch.equal(item["latents"], ds[10]["latents"])
    assert not torch.equal(item["latents"], ds[11]["latents"])  # another repeat draws other noise
    ds.set_epoch(1)
    assert not torch.equal(item["latents"], ds[10]["latents"])
    # the draw is scaling_factor * (mean + std * noise): check against the stored posterior
    ds.set_epoch(0)
    cache = LatentCache(str(world / "cache"), module_identity(vae))
    flipped = item["crop_top_left"][1] == 11
    keys = ds.samples[1].latent_keys
    stored = cache.load(keys[1] if flipped else keys[0])
    z = (item["latents"] / vae.config.scaling_factor - stored["mean"]) / stored["std"]
    assert abs(float(z.mean())) < 0.5 and 0.5 < float(z.std()) < 1.5


def test_dataloader_with_bucket_sampler(world):
    data = build_train_data(_recipe(world))
    sampler = BucketBatchSampler(data.bucket_ids, batch_size=4, seed=0)
    loader = DataLoader(data.dataset, batch_sampler=sampler, collate_fn=collate)
    seen = 0
    for batch in loader:
        n = len(batch["caption"])
        assert batch["pixel_values"].shape[0] == n and batch["original_size"].shape == (n, 2)
        assert batch["target_size"].dtype == torch.long and batch["is_reg"].dtype == torch.bool
        h, w = batch["pixel_values"].shape[-2:]
        assert (batch["target_size"] == torch.tensor([h, w])).all()
        seen += n
    assert seen == len(data.dataset) and len(loader) == len(sampler)


def test_validation_split(world):
    recipe = _recipe(world, validation_split=0.34, reg_path="")
    data = build_train_data(recipe)
    assert data.validation is not None and len(data.validation) == 1
    assert data.stats.num_validation_images == 1 and data.stats.num_train_files == 2
    val = data.validation
    first = val[0]["caption"]
    val.set_epoch(5)
    assert val[0]["caption"] == first and val.transform.is_static  # no shuffle in validation captions
    rec = val.samples[0].record
    assert first == "sks, " + (rec.caption or rec.class_tokens)
    assert len(data.validation_bucket_ids) == 1
    records = list(range(10))
    assert split_validation(records, 0.2, 1) == split_validation(records, 0.2, 1)
    assert len(split_validation(records, 0.2, 1)[1]) == 2 and split_validation([1], 0.5, 0) == ([1], [])
