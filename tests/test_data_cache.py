"""Latent and text caches: hits, targeted misses (content, bucket, crop, flip, VAE), damage, atomic files."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

from lora_kit.config.schema import BucketConfig, CacheConfig, DatasetConfig, Recipe
from lora_kit.data.buckets import Placement
from lora_kit.data.cache import (
    LatentCache,
    TextCache,
    latent_key,
    module_identity,
    sample_latents,
    scale_latents,
)
from lora_kit.data.dataset import build_train_data, place, render_pixels


@pytest.fixture(scope="module")
def vae():
    from lora_kit.models.presets import build_components

    return build_components("tiny-sd15", seed=0)["vae"].eval()


def _gradient(size, seed):
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    root = tmp_path / "data" / "2_star"
    root.mkdir(parents=True)
    _gradient((64, 64), 1).save(root / "a.png")  # square: no crop slack
    _gradient((96, 64), 2).save(root / "b.png")  # bucket (80, 48), a little vertical slack
    _gradient((200, 40), 3).save(root / "c.png")  # extreme aspect: bucket (128, 32), wide slack
    for name in "abc":
        (root / f"{name}.txt").write_text(f"star {name}", encoding="utf-8")
    return tmp_path


def _recipe(data_dir: Path, **changes) -> Recipe:
    buckets = dict(resolution=64, bucket_reso_steps=16, min_bucket_reso=32, max_bucket_reso=128)
    dataset = dict(path=str(data_dir / "data"))
    for key in list(changes):
        if key in BucketConfig.__dataclass_fields__:
            buckets[key] = changes.pop(key)
        elif key in DatasetConfig.__dataclass_fields__:
            dataset[key] = changes.pop(key)
    return Recipe(
        dataset=DatasetConfig(**dataset), buckets=BucketConfig(**buckets),
        cache=CacheConfig(dir=str(data_dir / "cache")), **changes,
    )


def _computed(data_dir, vae, **changes) -> tuple[int, int]:
    stats = build_train_data(_recipe(data_dir, **changes), vae=vae).stats.latent_cache
    return stats["computed"], stats["cached"]


def test_hits_and_targeted_misses(data_dir, vae):
    assert _computed(data_dir, vae) == (3, 0)
    assert _computed(data_dir, vae) == (0, 3)  # second run reuses everything

    # content: one image edited in place -> only it is encoded again
    _gradient((64, 64), 99).save(data_dir / "data" / "2_star" / "a.png")
    assert _computed(data_dir, vae) == (1, 2)

    # bucket: a smaller max_bucket_reso moves only the 5:1 image to another bucket
    assert _computed(data_dir, vae, max_bucket_reso=96) == (1, 2)

    # crop: random crops differ from the centre crop only where an image has slack
    r1, r2 = _recipe(data_dir), _recipe(data_dir, random_crop=True)
    records = build_train_data(r1).dataset.samples
    changed = sum(a != b for a, b in zip(place([s.record for s in records], r1), place([s.record for s in records], r2)))
    assert changed == 2  # b.png and c.png; the square a.png has nothing to crop
    assert _computed(data_dir, vae, random_crop=True) == (2, 1)

    # flip: the mirrored latents are new entries, the plain ones are reused
    assert _computed(data_dir, vae, flip_aug=True) == (3, 3)
    assert _computed(data_dir, vae, flip_aug=True) == (0, 6)

    # VAE: any weight change -> everything again
    other = copy.deepcopy(vae)
    with torch.no_grad():
        next(other.parameters()).flatten()[0] += 1e-3
    assert _computed(data_dir, other, flip_aug=True) == (6, 0)
    leftovers = [p for p in (data_dir / "cache").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []  # atomic writes leave no temp files


def test_stored_posterior_matches_vae_and_damage_is_recomputed(data_dir, vae):
    data = build_train_data(_recipe(data_dir), vae=vae)
    sample = data.dataset.samples[1]
    cache = LatentCache(str(data_dir / "cache"), module_identity(vae))
    stored = cache.load(sample.latent_keys[0])
    with torch.no_grad():
        dist = vae.encode(render_pixels(sample.record, sample.placement, False)[None]).latent_dist
    assert stored["mean"].shape == (4, 12, 20)  # bucket (80, 48) / 4
    assert torch.allclose(stored["mean"], dist.mean[0], atol=1e-6)
    assert torch.allclose(stored["std"], dist.std[0], atol=1e-6)

    cache.path(sample.latent_keys[0]).write_bytes(b"\x00garbage")
    assert not cache.is_valid(sample.latent_keys[0])
    assert _computed(data_dir, vae) == (1, 2)
    assert cache.is_valid(sample.latent_keys[0])


def test_latent_key_parts():
    p = Placement((64, 64), (80, 64), 8, 0, (100, 80))
    base = latent_key("abc", p, False, "vae1")
    variants = [
        latent_key("abd", p, False, "vae1"),
        latent_key("abc", dataclasses.replace(p, bucket=(64, 48)), False, "vae1"),
        latent_key("abc", dataclasses.replace(p, crop_left=7), False, "vae1"),
        latent_key("abc", dataclasses.replace(p, resized=(81, 64)), False, "vae1"),
        latent_key("abc", p, True, "vae1"),
        latent_key("abc", p, False, "vae2"),
    ]
    assert len({base, *variants}) == 7
    assert latent_key("abc", dataclasses.replace(p, original=(200, 160)), False, "vae1") == base


def test_module_identity(vae):
    ident = module_identity(vae)
    assert module_identity(copy.deepcopy(vae)) == ident
    assert module_identity(copy.deepcopy(vae).half()) != ident  # fp16 latents differ from fp32 ones
    assert module_identity(vae, extra="clip_skip=2") != ident


def test_sampling_and_scaling():
    mean, std = torch.zeros(4, 2, 2), torch.full((4, 2, 2), 0.5)
    a = sample_latents(mean, std, torch.Generator().manual_seed(3))
    b = sample_latents(mean, std, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.std() > 0.1
    assert torch.equal(scale_latents(torch.ones(1), {"scaling_factor": 0.18215}), torch.tensor([0.18215]))
    shifted = scale_latents(torch.ones(1), {"scaling_factor": 2.0, "shift_factor": 0.25})
    assert torch.equal(shifted, torch.tensor([1.5]))


def test_text_cache(tmp_path):
    calls: list[list[str]] = []

    def encode(captions: list[str]) -> dict[str, torch.Tensor]:
        calls.append(list(captions))
        codes = torch.tensor([[float(len(c)), float(ord(c[0]))] for c in captions])
        return {"prompt_embeds": codes[:, None, :].repeat(1, 3, 1), "pooled_prompt_embeds": codes * 2}

    cache = TextCache(tmp_path, "encoder-a")
    first = cache.get_or_compute(["a star", "b circle", "a star"], encode)
    assert calls == [["a star", "b circle"]]
    assert first[0]["prompt_embeds"].shape == (3, 2) and first[0]["pooled_prompt_embeds"].tolist() == [12.0, 194.0]
    assert torch.equal(first[0]["prompt_embeds"], first[2]["prompt_embeds"])
    again = cache.get_or_compute(["b circle", "c"], encode)
    assert calls[-1] == ["c"] and torch.equal(again[0]["pooled_prompt_embeds"], first[1]["pooled_prompt_embeds"])
    TextCache(tmp_path, "encoder-b").get_or_compute(["a star"], encode)
    assert calls[-1] == ["a star"]  # another encoder identity never reuses embeddings


def test_content_hash_memo_sees_same_size_rewrite_with_restored_mtime(tmp_path):
    import hashlib
    import os

    from lora_kit.data.cache import ContentHasher
    from lora_kit.data.sources import ImageRecord

    path = tmp_path / "x.png"
    path.write_bytes(b"A" * 64)
    record = ImageRecord(str(path), None, None, 1, False, "f", (8, 8))
    hasher = ContentHasher(tmp_path / "index.json")
    assert hasher.sha(record) == hashlib.sha256(b"A" * 64).hexdigest()
    hasher.save()
    st = os.stat(path)
    path.write_bytes(b"B" * 64)  # same size, and a copy tool puts the old mtime back
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ContentHasher(tmp_path / "index.json").sha(record) == hashlib.sha256(b"B" * 64).hexdigest()


def test_two_processes_split_the_work_without_gaps(tmp_path, vae):
    from lora_kit.data.cache import LatentItem, precompute_latents

    def pixels(seed):
        return lambda: torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1

    items = [LatentItem(latent_key(f"img{i}", Placement((32, 32), (32, 32), 0, 0, (32, 32)), False, "v"), pixels(i), (32, 32))
             for i in range(12)]
    def undecodable():
        raise OSError("broken data stream when reading image file")

    items.append(LatentItem(latent_key("bad", Placement((32, 32), (32, 32), 0, 0, (32, 32)), False, "v"), undecodable, (32, 32)))
    cache = LatentCache(tmp_path, "v" * 64)
    # rank 1 runs first; rank 0 checks the cache later and already sees rank 1's files
    r1 = precompute_latents(items, vae, cache, vae_batch_size=4, num_processes=2, process_index=1)
    r0 = precompute_latents(items, vae, cache, vae_batch_size=4, num_processes=2, process_index=0)
    assert r0["computed"] + r1["computed"] == 12 and r0["computed"] > 0 and r1["computed"] > 0
    assert len(r0["failed"]) + len(r1["failed"]) == 1  # the undecodable item is reported, not fatal
    assert all(cache.has(it.key) for it in items[:12]) and not cache.has(items[12].key)
    again = precompute_latents(items, vae, cache, vae_batch_size=4)
    assert again["computed"] == 0 and again["cached"] == 12 and len(again["failed"]) == 1


def test_vae_batch_size_auto_and_batching_does_not_change_latents(tmp_path, vae):
    from lora_kit.data.cache import LatentItem, precompute_latents, vae_batch_for

    # auto: 2 megapixels per encode (SDXL's fp32 VAE at 1024 px holds ~1.5 GB per image), at most 8
    assert [vae_batch_for(b, 0) for b in ((512, 512), (768, 768), (1024, 1024), (2048, 2048), (64, 64))] == [8, 3, 2, 1, 8]
    assert vae_batch_for((1024, 1024), 5) == 5
    items = [LatentItem(latent_key(f"img{i}", Placement((32, 32), (32, 32), 0, 0, (32, 32)), False, "v"),
                        lambda i=i: torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)) * 2 - 1, (32, 32))
             for i in range(5)]
    one, four = LatentCache(tmp_path / "one", "v" * 64), LatentCache(tmp_path / "four", "v" * 64)
    assert precompute_latents(items, vae, one, vae_batch_size=1)["computed"] == 5
    assert precompute_latents(items, vae, four, vae_batch_size=4)["computed"] == 5
    for it in items:
        a, b = one.load(it.key), four.load(it.key)
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_damage_the_scan_cannot_see_drops_the_image(data_dir, vae):
    # corrupt compressed data inside IDAT: the header and the IEND tail are intact, so only a decode fails
    path = data_dir / "data" / "2_star" / "b.png"
    raw = bytearray(path.read_bytes())
    start = raw.find(b"IDAT") + 20
    for k in range(start, start + 200):
        raw[k] ^= 0x55
    path.write_bytes(bytes(raw))
    data = build_train_data(_recipe(data_dir), vae=vae)
    assert data.stats.latent_cache == {"total": 3, "cached": 0, "computed": 2, "failed": 1}
    assert data.stats.skipped == 1 and data.stats.num_train_files == 2
    assert data.stats.skipped_files == {"b.png": "could not be decoded while caching latents"}
    assert [Path(s.record.path).name for s in data.dataset.samples] == ["a.png", "c.png"]
    assert len(data.dataset) == 4 and len(data.bucket_ids) == 4
