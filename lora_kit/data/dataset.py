"""The training dataset: records placed in buckets, expanded by repeats, captions transformed per epoch.

`build_train_data(recipe, vae)` is the one entry point the trainer needs: scan -> validation split ->
bucket placement -> (latent cache) -> `TrainData`: the `LoraDataset`, a bucket id per index and `DataStats`
(what the run summary, the kohya metadata and the setup screen report).

Every random choice of a sample is a function of (seed, epoch, index) only: caption shuffle/dropout,
flip, per-epoch random crop (pixel mode) and the latent draw from the cached posterior. So the batches
of a resumed run, or of any rank, are bit-identical to an uninterrupted run.

Masked loss (`[loss] masked`): each sample also carries `mask`, (1, h, w) in [0, 1], from its
`<stem>.mask.png` or its alpha channel (all ones without either), placed exactly like the image (same
resize, crop and flip). Cached: at latent resolution, from the mask cache. Pixel mode: at pixel
resolution; the loss area-averages it to the latent grid on the device, the same operation the cache uses.

DataLoader workers get a copy of the dataset when an epoch's iterator is created: call `set_epoch`
before `iter(loader)` and keep `persistent_workers=False` (the default), or the workers keep the old epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from lora_kit.config.schema import Recipe
from lora_kit.data.buckets import (
    Placement, apply_placement, assign, bucket_histogram, buckets_for, crop_offsets, mean_aspect_error, warn_small_images,
)
from lora_kit.data.cache import (
    LatentCache, LatentItem, MaskItem, latent_key, mask_key, module_identity, precompute_latents, precompute_masks, sample_latents,
    scale_latents, vae_downscale,
)
from lora_kit.data.captions import CaptionTransform, base_caption, caption_rng
from lora_kit.data.sources import ImageRecord, ScanResult, folder_summary, scan_dataset
from lora_kit.data.tags import tag_frequency
from lora_kit.errors import UserError
from lora_kit.paths import cache_dir


@dataclass
class Sample:
    """One image: its record, its placement and (when cached) the latent keys for (unflipped, flipped)."""

    record: ImageRecord
    placement: Placement
    latent_keys: Optional[tuple[str, Optional[str]]] = None
    mask_source: Optional[str] = None  # "file", "alpha" or None (a full mask); set when [loss] masked
    mask_keys: Optional[tuple[str, Optional[str]]] = None  # mask cache keys (unflipped, flipped)


def _sub_rng(kind: str, seed: int, epoch: int, index: int) -> random.Random:
    return random.Random(f"{kind}:{seed}:{epoch}:{index}")


def _torch_seed(seed: int, epoch: int, index: int) -> int:
    digest = hashlib.sha256(f"latent:{seed}:{epoch}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def image_to_tensor(image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [-1, 1] (what diffusers' VAE expects)."""
    arr = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def render_pixels(record: ImageRecord, placement: Placement, flip: bool, crop=None, verify: bool = False) -> torch.Tensor:
    """`verify`: check the pixel data's length against the header too (once per image: when it is cached)."""
    return image_to_tensor(apply_placement(record.load(verify=verify), placement, flip, crop))


def mask_to_tensor(mask) -> torch.Tensor:
    """"L" PIL mask -> (1, H, W) float32 in [0, 1] (255 = train)."""
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None]


def render_with_mask(record: ImageRecord, placement: Placement, flip: bool, crop=None, verify: bool = False):
    """(pixels (3, H, W), mask (1, H, W)) from one decode, the mask placed exactly like the image."""
    image, mask = record.load_with_mask(verify=verify)
    pixels = image_to_tensor(apply_placement(image, placement, flip, crop))
    if mask is None:
        return pixels, torch.ones((1, *pixels.shape[1:]))
    return pixels, mask_to_tensor(apply_placement(mask, placement, flip, crop))


def render_latent_mask(record: ImageRecord, placement: Placement, flip: bool, factor: int) -> torch.Tensor:
    """(1, H/factor, W/factor): the placed mask area-averaged onto the latent grid (what the cache stores)."""
    try:
        pil = record.load_mask()
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError...
        raise UserError(f"cannot read the mask of {record.name}: {type(exc).__name__}: {exc}") from None
    bw, bh = placement.bucket
    mask = torch.ones((1, bh, bw)) if pil is None else mask_to_tensor(apply_placement(pil, placement, flip))
    return torch.nn.functional.interpolate(mask[None], size=(bh // factor, bw // factor), mode="area")[0]


class LoraDataset(Dataset):
    """`dataset[i]` -> dict(latents | pixel_values, caption, original_size, crop_top_left, target_size,
    is_reg, index); sizes as (h, w) / (top, left), the order SDXL's add_time_ids uses."""

    def __init__(
        self,
        samples: list[Sample],
        transform: CaptionTransform,
        seed: int,
        flip_aug: bool = False,
        random_crop: bool = False,
        latent_dir: Optional[str] = None,
        vae_id: str = "",
        vae_scaling: Optional[dict] = None,
        use_repeats: bool = True,
        masked: bool = False,
    ):
        self.samples = samples
        self.transform = transform
        self.seed = seed
        self.flip_aug = flip_aug
        self.random_crop = random_crop
        self.latent_dir, self.vae_id = latent_dir, vae_id
        self.vae_scaling = vae_scaling or {}
        self.masked = masked
        self.index = [i for i, s in enumerate(samples) for _ in range(s.record.repeats if use_repeats else 1)]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    @property
    def cached(self) -> bool:
        return self.latent_dir is not None

    @functools.cached_property
    def _cache(self):
        return LatentCache(self.latent_dir, self.vae_id)

    def bucket_of(self, index: int) -> tuple[int, int]:
        return self.samples[self.index[index]].placement.bucket

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[self.index[index]]
        rec, pl = sample.record, sample.placement
        flip = self.flip_aug and _sub_rng("flip", self.seed, self.epoch, index).random() < 0.5
        left, top = pl.crop_left, pl.crop_top
        out: dict[str, Any] = {}
        if self.cached:
            out["latents"] = self._latents(sample, flip, index)
            if self.masked:
                out["mask"] = self._mask(sample, flip, tuple(out["latents"].shape[-2:]))
        else:
            if self.random_crop:
                left, top = crop_offsets(pl.resized, pl.bucket, _sub_rng("crop", self.seed, self.epoch, index))
            if self.masked and sample.mask_source:
                out["pixel_values"], out["mask"] = render_with_mask(rec, pl, flip, (left, top))
            else:
                out["pixel_values"] = render_pixels(rec, pl, flip, (left, top))
                if self.masked:
                    out["mask"] = torch.ones((1, *out["pixel_values"].shape[1:]))
        if flip:
            left = pl.resized[0] - pl.bucket[0] - left  # the crop as measured on the mirrored image
        out.update(
            caption=self.transform.for_record(rec, caption_rng(self.seed, self.epoch, index)),
            original_size=(pl.original[1], pl.original[0]),
            crop_top_left=(top, left),
            target_size=(pl.bucket[1], pl.bucket[0]),
            is_reg=rec.is_reg,
            index=index,
        )
        return out

    def _latents(self, sample: Sample, flip: bool, index: int) -> torch.Tensor:
        key = sample.latent_keys[1] if flip else sample.latent_keys[0]
        tensors = self._cache.load(key)
        gen = torch.Generator().manual_seed(_torch_seed(self.seed, self.epoch, index))
        return scale_latents(sample_latents(tensors["mean"], tensors["std"], gen), self.vae_scaling)

    def _mask(self, sample: Sample, flip: bool, size: tuple[int, int]) -> torch.Tensor:
        if sample.mask_keys is None:
            return torch.ones((1, *size))
        return self._cache.load_mask(sample.mask_keys[1] if flip else sample.mask_keys[0])


def collate(batch: list[dict]) -> dict[str, Any]:
    """Stack a batch from one bucket: tensors stacked, sizes as (B, 2) long tensors, captions a list."""
    out: dict[str, Any] = {}
    for key in ("latents", "pixel_values", "mask"):
        if key in batch[0]:
            out[key] = torch.stack([b[key] for b in batch])
    for key in ("original_size", "crop_top_left", "target_size"):
        out[key] = torch.tensor([b[key] for b in batch], dtype=torch.long)
    out["caption"] = [b["caption"] for b in batch]
    out["is_reg"] = torch.tensor([b["is_reg"] for b in batch], dtype=torch.bool)
    out["index"] = torch.tensor([b["index"] for b in batch], dtype=torch.long)
    return out


# ---------------------------------------------------------------------------------------------- builder


@dataclass
class DataStats:
    """What the scan, the buckets and the latent cache found: the run summary, the kohya metadata and the
    setup screen read these fields. Image counts follow kohya: `num_*_images` include repeats."""

    num_train_images: int  # ss_num_train_images (with repeats)
    num_reg_images: int  # ss_num_reg_images (with repeats)
    num_train_files: int
    num_reg_files: int
    num_validation_images: int
    folders: dict  # kohya ss_dataset_dirs {folder: {n_repeats, img_count}} (validation excluded)
    reg_folders: dict
    tag_frequency: dict  # kohya ss_tag_frequency {folder: {tag: count}}
    bucket_histogram: dict  # (w, h) -> images
    bucket_info: dict  # kohya ss_bucket_info shape, counts with repeats
    mean_aspect_error: float
    skipped: int
    skipped_files: dict  # file name -> why
    missing_captions: int
    static_captions: bool  # every epoch's captions are the same (the text cache may be used)
    latent_cache: Optional[dict]  # {"total", "cached", "computed", "failed"[, "masks_computed"]}; None: no cache
    kind: str  # the scan's layout: kohya folders, imagefolder, ...
    masks: Optional[dict] = None  # [loss] masked: images per mask source {"file", "alpha", "none"}


@dataclass
class TrainData:
    """A run's dataset bundle, the only one: lora_kit.train.data iterates it, nothing re-wraps it."""

    dataset: LoraDataset
    bucket_ids: list[int]  # per dataset index (expanded by repeats), for BucketBatchSampler
    stats: DataStats
    buckets: list[tuple[int, int]] = field(default_factory=list)  # bucket id -> (w, h)
    validation: Optional[LoraDataset] = None
    validation_bucket_ids: list[int] = field(default_factory=list)


def split_validation(records: list[ImageRecord], fraction: float, seed: int) -> tuple[list, list]:
    """(train, validation): a seeded `fraction` of the records held out, at least one train image kept."""
    if fraction <= 0 or len(records) < 2:
        return records, []
    k = min(len(records) - 1, max(1, round(len(records) * fraction)))
    held = set(random.Random(f"validation:{seed}").sample(range(len(records)), k))
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def balance_reg(reg: list[ImageRecord], num_train: int) -> list[ImageRecord]:
    """kohya's prior-preservation balance (DreamBoothDataset): reg images are taken in order until their
    samples (with repeats) reach `num_train`, the training samples with repeats; if they fall short, their
    repeats are raised by one, round-robin, until they match. A surplus of reg images is left out."""
    kept, n = [], 0
    for r in reg:
        if n >= num_train:
            break
        kept.append(r)
        n += r.repeats
    repeats = [r.repeats for r in kept]
    for i in range(max(0, num_train - n) if kept else 0):
        repeats[i % len(kept)] += 1
    return [dataclasses.replace(r, repeats=k) for r, k in zip(kept, repeats)]


def place(records: list[ImageRecord], recipe: Recipe) -> list[Placement]:
    """Bucket placement; a random crop is seeded by the image's identity, so adding images leaves the
    others' crops (and cached latents) unchanged."""
    cfg = recipe.buckets
    buckets = buckets_for(cfg)
    out = []
    for r in records:
        rng = random.Random(f"crop:{recipe.seed}:{Path(r.path).name}:{r.row}:{r.folder}") if cfg.random_crop else None
        out.append(assign(r.size, buckets, cfg, rng))
    return out


def _tag_frequency(scans: list[ScanResult], separator: str) -> dict[str, dict[str, int]]:
    """kohya's ss_tag_frequency: per folder, over the raw captions (class tokens where none)."""
    per_folder: dict[str, list[str]] = {}
    for scan in scans:
        for r in scan.records:
            per_folder.setdefault(r.folder, []).append(base_caption(r.caption, r.class_tokens))
    return {folder: tag_frequency(caps, separator) for folder, caps in per_folder.items()}


def _bucket_info(samples: list[Sample]) -> dict:
    """kohya's ss_bucket_info shape: counts include repeats."""
    counts: dict[tuple[int, int], int] = {}
    for s in samples:
        counts[s.placement.bucket] = counts.get(s.placement.bucket, 0) + s.record.repeats
    buckets = {i: {"resolution": list(b), "count": c} for i, (b, c) in enumerate(sorted(counts.items()))}
    return {"buckets": buckets, "mean_img_ar_error": mean_aspect_error(s.placement for s in samples)}


def _attach_latents(samples, recipe, vae, device, dtype, num_processes, process_index, barrier) -> tuple[str, str, dict]:
    directory = recipe.cache.dir or str(cache_dir() / "cache")
    vae_id = module_identity(vae)
    cache = LatentCache(directory, vae_id)
    items = []
    for s in samples:
        sha = cache.hasher.sha(s.record)
        flips = (False, True) if recipe.dataset.flip_aug else (False,)
        keys = [latent_key(sha, s.placement, f, vae_id) for f in flips]
        s.latent_keys = (keys[0], keys[1] if len(keys) > 1 else None)
        for f, k in zip(flips, keys):
            render = functools.partial(render_pixels, s.record, s.placement, f, verify=True)
            items.append(LatentItem(k, render, s.placement.bucket))
    if process_index == 0:
        cache.hasher.save()
    result = precompute_latents(items, vae, cache, recipe.cache.vae_batch_size, device, dtype, num_processes, process_index)
    if recipe.loss.masked:
        result["masks_computed"] = _attach_masks(samples, recipe.dataset.flip_aug, vae_downscale(vae), cache, num_processes, process_index)
    if barrier is not None:
        barrier()
    # After the barrier every process sees the same files: an entry still missing failed to decode on
    # whichever process owned it, and every process drops that image alike.
    result["failed"] = [it.key for it in items if not cache.has(it.key)]
    return directory, vae_id, result


def _attach_masks(samples, flip_aug: bool, factor: int, cache: LatentCache, num_processes: int, process_index: int) -> int:
    """Mask cache keys for the samples that have a mask (the others train with a full mask, made at load
    time), and this process' share of the missing entries. Returns how many entries it computed."""
    items = []
    for s in samples:
        if not s.mask_source:
            continue
        sha = cache.hasher.sha(s.record)  # memoised: the latent keys hashed it already
        mask_sha = hashlib.sha256(s.record.mask_file().read_bytes()).hexdigest() if s.mask_source == "file" else "alpha"
        flips = (False, True) if flip_aug else (False,)
        keys = [mask_key(sha, mask_sha, s.placement, f, factor) for f in flips]
        s.mask_keys = (keys[0], keys[1] if len(keys) > 1 else None)
        items += [MaskItem(k, lk, functools.partial(render_latent_mask, s.record, s.placement, f, factor))
                  for f, k, lk in zip(flips, keys, s.latent_keys)]
    return precompute_masks(items, cache, num_processes, process_index)


def _mask_counts(samples: list[Sample]) -> dict[str, int]:
    """How many images train with a mask file, an alpha mask, or a full mask (none)."""
    kinds = [s.mask_source or "none" for s in samples]
    return {k: kinds.count(k) for k in ("file", "alpha", "none")}


def build_train_data(
    recipe: Recipe,
    vae=None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache: bool = True,
    num_processes: int = 1,
    process_index: int = 0,
    barrier: Optional[Callable[[], None]] = None,
) -> TrainData:
    """Everything the trainer needs from [dataset]/[buckets]/[cache]. Latents are cached when `cache`,
    `[cache] latents` and a `vae` (already on `device` in `dtype`) are given; `barrier` (e.g.
    accelerator.wait_for_everyone) runs after each process cached its share."""
    ds_cfg = recipe.dataset
    # Every image is fully decoded once: by the latent cache when there is one, else here by the scan.
    decode = not (cache and recipe.cache.latents and vae is not None)
    train_scan = scan_dataset(ds_cfg, decode=decode)
    reg_scan = scan_dataset(ds_cfg, reg=True, decode=decode) if ds_cfg.reg_path else None
    train_records, val_records = split_validation(train_scan.records, ds_cfg.validation_split, recipe.seed)
    reg_records = reg_scan.records if reg_scan else []
    if ds_cfg.reg_balance:
        reg_records = balance_reg(reg_records, sum(r.repeats for r in train_records))
    records = train_records + reg_records
    samples = [Sample(r, p) for r, p in zip(records, place(records, recipe))]
    warn_small_images([s.record.name for s in samples], [s.placement for s in samples], recipe.buckets)
    val_samples = [Sample(r, p) for r, p in zip(val_records, place(val_records, _without_random_crop(recipe)))]
    if recipe.loss.masked:
        for s in samples + val_samples:
            s.mask_source = s.record.mask_source(decode=decode)

    latent_dir, vae_id, scaling, cache_result, dropped = None, "", None, None, []
    if cache and recipe.cache.latents and vae is not None:
        samples, val_samples, latent_dir, vae_id, cache_result, dropped = _cache_latents(
            samples, val_samples, recipe, vae, device, dtype, num_processes, process_index, barrier
        )
        scaling = {"scaling_factor": vae.config.scaling_factor, "shift_factor": getattr(vae.config, "shift_factor", None)}

    transform = CaptionTransform(ds_cfg)
    common = dict(seed=recipe.seed, latent_dir=latent_dir, vae_id=vae_id, vae_scaling=scaling, masked=recipe.loss.masked)
    dataset = LoraDataset(samples, transform, flip_aug=ds_cfg.flip_aug, random_crop=recipe.buckets.random_crop, **common)
    validation = LoraDataset(val_samples, CaptionTransform(ds_cfg, augment=False), use_repeats=False, **common) if val_samples else None

    buckets = sorted({s.placement.bucket for s in samples + val_samples})
    bucket_id = {b: i for i, b in enumerate(buckets)}
    stats = _stats(train_scan, reg_scan, samples, val_samples, transform, cache_result, transform.separator, dropped)
    if recipe.loss.masked:
        stats.masks = _mask_counts(samples)
    return TrainData(
        dataset=dataset,
        bucket_ids=[bucket_id[dataset.bucket_of(i)] for i in range(len(dataset))],
        stats=stats,
        buckets=buckets,
        validation=validation,
        validation_bucket_ids=[bucket_id[validation.bucket_of(i)] for i in range(len(validation))] if validation else [],
    )


def _cache_latents(samples, val_samples, recipe, vae, device, dtype, num_processes, process_index, barrier):
    """Fill the latent cache; images that fail to decode there are dropped (and returned, for the stats)."""
    latent_dir, vae_id, cache_result = _attach_latents(
        samples + val_samples, recipe, vae, device, dtype, num_processes, process_index, barrier
    )
    failed = set(cache_result.pop("failed"))
    dropped = [s.record for s in samples + val_samples if failed & set(s.latent_keys)]
    samples = [s for s in samples if not failed & set(s.latent_keys)]
    val_samples = [s for s in val_samples if not failed & set(s.latent_keys)]
    cache_result["failed"] = len(dropped)  # images dropped
    if not samples:
        raise UserError("no image could be decoded for the latent cache")
    return samples, val_samples, latent_dir, vae_id, cache_result, dropped


def _without_random_crop(recipe: Recipe) -> Recipe:
    return dataclasses.replace(recipe, buckets=dataclasses.replace(recipe.buckets, random_crop=False))


def _stats(train_scan, reg_scan, samples, val_samples, transform, cache_result, separator, dropped) -> DataStats:
    train = [s for s in samples if not s.record.is_reg]
    reg = [s for s in samples if s.record.is_reg]
    skipped = dict(train_scan.skipped.skipped)
    if reg_scan:
        skipped.update(reg_scan.skipped.skipped)
    skipped.update({r.name: "could not be decoded while caching latents" for r in dropped})
    scans = [train_scan] + ([reg_scan] if reg_scan else [])
    return DataStats(
        # kohya semantics: ss_num_train_images / ss_num_reg_images count repeats
        num_train_images=sum(s.record.repeats for s in train),
        num_reg_images=sum(s.record.repeats for s in reg),
        num_train_files=len(train),
        num_reg_files=len(reg),
        num_validation_images=len(val_samples),
        folders=folder_summary(s.record for s in train),  # kohya ss_dataset_dirs (validation excluded)
        reg_folders=folder_summary(s.record for s in reg),
        tag_frequency=_tag_frequency(scans, separator),
        bucket_histogram=bucket_histogram(s.placement for s in samples),
        bucket_info=_bucket_info(samples),
        mean_aspect_error=mean_aspect_error(s.placement for s in samples),
        skipped=len(skipped),
        skipped_files={Path(k).name: v for k, v in skipped.items()},
        missing_captions=train_scan.missing_captions + (reg_scan.missing_captions if reg_scan else 0),
        static_captions=transform.is_static,
        latent_cache=cache_result,
        kind=train_scan.kind,
    )
