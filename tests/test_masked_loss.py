"""[loss] masked: mask files and alpha channels, placed exactly like their image, cached at latent resolution,
keyed by the mask, passed to the loss; a masked run resumes bit-identically. Checks of the [loss] keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lora_kit.config.load import load_recipe
from lora_kit.config.schema import BucketConfig, CacheConfig, DatasetConfig, LossConfig, Recipe
from lora_kit.data.dataset import build_train_data, collate
from lora_kit.data.layout import is_image_file
from lora_kit.data.sources import scan_dataset
from lora_kit.errors import UserError
from train_utils import run_training


@pytest.fixture(scope="module")
def vae():
    from lora_kit.models.presets import build_components

    return build_components("tiny-sd15", seed=0)["vae"].eval()


def _blob(size, seed) -> np.ndarray:
    """(h, w) uint8: a seeded pattern of soft and hard edges, so resampling and cropping both show."""
    g = torch.Generator().manual_seed(seed)
    coarse = (torch.rand(1, 1, 6, 6, generator=g) > 0.5).float() * 255
    return torch.nn.functional.interpolate(coarse, size=(size[1], size[0]), mode="bilinear")[0, 0].to(torch.uint8).numpy()


def _dataset(tmp_path: Path) -> Path:
    """a: a 96x64 image with a mask file; its red channel IS the mask, so the placed mask can be read back
    from the placed pixels. b: black RGBA (composited on white: red = 255 - alpha). c: plain RGB, no mask."""
    root = tmp_path / "data" / "1_star"
    root.mkdir(parents=True)
    m = _blob((96, 64), 1)
    Image.fromarray(np.stack([m, np.zeros_like(m), np.zeros_like(m)], -1)).save(root / "a.png")
    Image.fromarray(m).save(root / "a.mask.png")
    n = _blob((64, 80), 2)
    Image.fromarray(np.stack([np.zeros_like(n)] * 3 + [n], -1), "RGBA").save(root / "b.png")
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(root / "c.png")
    for name in "abc":
        (root / f"{name}.txt").write_text(f"star {name}", encoding="utf-8")
    return tmp_path


def _recipe(base: Path, **dataset) -> Recipe:
    return Recipe(
        dataset=DatasetConfig(path=str(base / "data"), **dataset),
        buckets=BucketConfig(resolution=64, bucket_reso_steps=16, min_bucket_reso=32, max_bucket_reso=128),
        cache=CacheConfig(dir=str(base / "cache")), loss=LossConfig(masked=True),
    )


def _by_name(data) -> dict:
    ds = data.dataset
    return {ds.samples[ds.index[i]].record.stem: i for i in range(len(ds))}


def test_mask_files_are_not_images(tmp_path):
    assert is_image_file("a.png") and not is_image_file("a.mask.png") and not is_image_file("A.MASK.PNG")
    base = _dataset(tmp_path)
    names = sorted(r.name for r in scan_dataset(DatasetConfig(path=str(base / "data"))).records)
    assert names == ["a.png", "b.png", "c.png"]


def test_pixel_mode_masks_follow_the_image(tmp_path):
    """Resize, crop (random, per epoch) and flip: the mask lands exactly where the image's red channel does."""
    base = _dataset(tmp_path)
    data = build_train_data(_recipe(base, flip_aug=True), cache=False)
    ds, idx = data.dataset, _by_name(data)
    assert data.stats.masks == {"file": 1, "alpha": 1, "none": 1}
    ds.random_crop = True
    flips = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for stem in "ab":
            item = ds[idx[stem]]
            px, mask = item["pixel_values"], item["mask"]
            assert mask.shape == (1, *px.shape[1:])
            red = (px[0] + 1) * 127.5 / 255
            if stem == "b":
                red = 1 - red
            torch.testing.assert_close(mask[0], red, atol=1.5 / 255, rtol=0)
            flips.add(item["crop_top_left"])
        plain = ds[idx["c"]]
        assert torch.equal(plain["mask"], torch.ones(1, *plain["pixel_values"].shape[1:]))
    assert len(flips) > 2  # the crops (and flips) really varied
    batch = collate([ds[idx["a"]], ds[idx["a"]]])
    assert batch["mask"].shape == (2, 1, *batch["pixel_values"].shape[2:])


def test_cached_masks_are_latent_sized_and_keyed_by_the_mask(tmp_path, vae):
    base = _dataset(tmp_path)
    recipe = _recipe(base, flip_aug=True)
    pixel = build_train_data(recipe, cache=False).dataset
    data = build_train_data(recipe, vae=vae)
    ds, idx = data.dataset, _by_name(data)
    assert ds.cached and data.stats.latent_cache["masks_computed"] == 4  # a and b, each unflipped + flipped
    for stem in "abc":
        item, ref = ds[idx[stem]], pixel[idx[stem]]  # same epoch and index: same flip
        assert item["mask"].shape == (1, *item["latents"].shape[1:])
        want = torch.nn.functional.interpolate(ref["mask"][None], size=item["latents"].shape[1:], mode="area")[0]
        torch.testing.assert_close(item["mask"], want, atol=1e-6, rtol=0)
    sample = ds.samples[ds.index[idx["a"]]]
    latent_keys, mask_keys = sample.latent_keys, sample.mask_keys
    assert build_train_data(recipe, vae=vae).stats.latent_cache["masks_computed"] == 0  # all cached

    # an edited mask: new mask keys and values, the latents stay cached
    Image.fromarray(255 - _blob((96, 64), 1)).save(base / "data" / "1_star" / "a.mask.png")
    again = build_train_data(recipe, vae=vae)
    assert again.stats.latent_cache["computed"] == 0 and again.stats.latent_cache["masks_computed"] == 2
    s2 = again.dataset.samples[again.dataset.index[idx["a"]]]
    assert s2.latent_keys == latent_keys and set(s2.mask_keys).isdisjoint(mask_keys)
    old, new = ds[idx["a"]]["mask"], again.dataset[idx["a"]]["mask"]
    torch.testing.assert_close(new, 1 - old, atol=1.5 / 255, rtol=0)  # 8-bit resampling rounds


def test_undecodable_masked_image_is_dropped_like_any_other(tmp_path, vae):
    """Damage only a decode sees (corrupt IDAT) in the image with a mask file: skipped, not fatal."""
    base = _dataset(tmp_path)
    path = base / "data" / "1_star" / "a.png"
    raw = bytearray(path.read_bytes())
    start = raw.find(b"IDAT") + 20
    for k in range(start, start + 200):
        raw[k] ^= 0x55
    path.write_bytes(bytes(raw))
    data = build_train_data(_recipe(base), vae=vae)
    assert data.stats.skipped_files == {"a.png": "could not be decoded while caching latents"}
    assert data.stats.latent_cache["masks_computed"] == 1  # b's alpha mask only
    assert sorted(s.record.name for s in data.dataset.samples) == ["b.png", "c.png"]


def test_mask_of_another_size_is_one_line(tmp_path):
    base = _dataset(tmp_path)
    Image.fromarray(_blob((48, 32), 3)).save(base / "data" / "1_star" / "a.mask.png")
    with pytest.raises(UserError, match=r"mask a\.mask\.png is 48x32 but its image a\.png is 96x64"):
        build_train_data(_recipe(base), cache=False)
    (base / "data" / "1_star" / "a.mask.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match=r"cannot read mask a\.mask\.png"):
        build_train_data(_recipe(base), cache=False)


@pytest.mark.parametrize("override,key", [("loss.huber_c=0", "huber_c"), ("loss.huber_scale=-1", "huber_scale"),
                                          ('loss.type="l1"', "type"), ('loss.huber_schedule="linear"', "huber_schedule")])
def test_loss_keys_are_checked(override, key):
    with pytest.raises(UserError, match=rf"loss.*{key}"):
        load_recipe("tiny-smoke", [override])


def test_masked_run_resumes_exactly(tmp_path):
    base = _dataset(tmp_path / "d")
    over = ["train.max_steps=5", f'dataset.path="{base / "data"}"', "dataset.flip_aug=true", "loss.masked=true",
            "train.batch_size=1"]
    run_training(tmp_path / "full", over)
    part = tmp_path / "part"
    assert run_training(part, over, stop_after=3).global_step == 3
    assert run_training(part, over, resume="latest").global_step == 5
    a = load_file(str(tmp_path / "full" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(part / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "masked = true" in (part / "recipe.toml").read_text()
    # and the masks reached the loss: the same run without them trains other weights
    plain = tmp_path / "plain"
    run_training(plain, [o for o in over if o != "loss.masked=true"])
    c = load_file(str(plain / "pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)


def _trace_masked_step(tmp_path, base: Path, batch_size: int, cached: bool):
    """Ops of one masked Huber step (bf16 as tests/test_step_trace.py), plus the step's loss under l2 and
    under huber on that same batch. `cached`: latents and masks from the cache, else pixels."""
    import dataclasses

    from test_step_trace import OpRecorder

    from lora_kit.train.recipe import LoraTrainer
    from lora_kit.train.step import forward_loss
    from train_utils import reset_accelerate

    reset_accelerate()
    r = load_recipe("tiny-smoke", [
        f'output_dir="{tmp_path / f"b{batch_size}"}"', f"train.batch_size={batch_size}", "train.max_steps=3",
        'train.mixed_precision="bf16"', "log.tensorboard=false", "save.every_n_steps=0", "dataset.caption_dropout=0.0",
        f'dataset.path="{base / "data"}"', "loss.masked=true", 'loss.type="huber"', "buckets.max_bucket_reso=64",
        f"cache.latents={str(cached).lower()}",
    ])
    t = LoraTrainer(r)
    t.setup()
    t.ctx = dataclasses.replace(t.ctx, loss=r.loss)  # whether or not the trainer passes [loss] on itself
    batches = t.data.batches(0)
    t.step(next(batches))  # the first step creates the optimizer state
    batch = next(batches)
    assert len(batch["index"]) == batch_size and batch["mask"].shape[0] == batch_size
    with OpRecorder() as rec:
        t.step(batch)
    with torch.no_grad():
        huber = float(forward_loss(t.ctx, batch, 7)[0])
        l2 = float(forward_loss(dataclasses.replace(t.ctx, loss=LossConfig()), batch, 7)[0])
    t.cleanup()
    reset_accelerate()  # bf16 accelerator state must not leak into later in-process runs
    return rec.ops, huber, l2


@pytest.mark.parametrize("cached", [True, False])
def test_masked_huber_step_copies_once_and_reads_nothing_back(tmp_path, cached):
    """tests/test_step_trace.py's two properties hold with a mask and a Huber loss in the step."""
    base = _dataset(tmp_path / "d")
    (base / "data" / "1_star").rename(base / "data" / "4_star")  # 4 repeats: batches of 4 from one bucket
    traces = {b: _trace_masked_step(tmp_path, base, b, cached) for b in (2, 4)}
    for b, (ops, huber, l2) in traces.items():
        assert ops["_local_scalar_dense"] == 0, f"batch {b}: scalar reads in the step"
        assert huber != l2 and huber > 0
    copies = [{k: traces[b][0][k] for k in ("_to_copy", "copy_")} for b in (2, 4)]
    assert copies[0] == copies[1]
