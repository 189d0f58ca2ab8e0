"""Wiring the data pipeline into the loop: this process' sampler shard, cached text embeddings, batches.

lora_kit.data.dataset assembles the run's dataset (`TrainData`, with its `DataStats`); this module only
decides, for one run, whether text embeddings are cached (when captions are static and the text encoder
is frozen) and iterates batches from an exact (epoch, batch) position so resume continues mid-epoch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

import torch
from tqdm.auto import tqdm

from lora_kit.data.caption_priors import ensure_caption_priors
from lora_kit.data.class_images import ensure_class_images
from lora_kit.data.dataset import TrainData, build_train_data, collate
from lora_kit.data.sampler import BucketBatchSampler
from lora_kit.models.text import encode_prompts


@dataclass
class BatchFeed:
    """The loop's view of the data: `data` is the run's one dataset bundle (its stats included)."""

    data: TrainData
    sampler: BucketBatchSampler  # this process' shard
    text_cached: bool
    text_embeds: dict | None = None  # caption -> {"prompt_embeds": (L, D), "pooled_prompt_embeds": (D,)}

    @property
    def latents_cached(self) -> bool:
        return self.data.dataset.cached

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[dict]:
        """Batches of `epoch` for this process, from batch number `start_batch` on."""
        self.sampler.load_state_dict({"epoch": epoch, "position": start_batch})
        self.data.dataset.set_epoch(epoch)
        for indices in self.sampler:
            batch = collate([self.data.dataset[i] for i in indices])
            if self.text_embeds is not None:
                _attach_text(batch, self.text_embeds)
            yield batch
            if self.sampler.epoch != epoch:  # the sampler rolled over: this epoch is done
                return

    def validation_batches(self, batch_size: int) -> list[dict]:
        """The held-out set in fixed batches (one bucket each), no caption augmentation."""
        val = self.data.validation
        if val is None:
            return []
        groups: dict[int, list[int]] = {}
        for i, b in enumerate(self.data.validation_bucket_ids):
            groups.setdefault(b, []).append(i)
        out = []
        for idx in groups.values():
            for s in range(0, len(idx), batch_size):
                batch = collate([val[i] for i in idx[s : s + batch_size]])
                if self.text_embeds is not None:
                    _attach_text(batch, self.text_embeds)
                out.append(batch)
        return out


def _attach_text(batch: dict, table: dict) -> None:
    caps = batch["caption"]
    if not all(c in table for c in caps):
        return  # (e.g. a validation caption) encode live instead
    batch["prompt_embeds"] = torch.stack([table[c]["prompt_embeds"] for c in caps])
    if "pooled_prompt_embeds" in table[caps[0]]:
        batch["pooled_prompt_embeds"] = torch.stack([table[c]["pooled_prompt_embeds"] for c in caps])


def _text_cache_wanted(recipe, static: bool) -> bool:
    mode = recipe.cache.text
    if recipe.network.train_text_encoder:
        return False  # embeddings change every step
    return mode == "on" or (mode == "auto" and static)


def _encode_all(trainer_bundle, captions: list[str], clip_skip: int, device, batch_size: int = 16) -> dict:
    """caption -> embeddings, computed once (text encoders frozen). Small enough to keep in memory:
    a few hundred distinct captions at 77x768 fp16 is tens of MB."""
    b = trainer_bundle
    table = {}
    uniq = sorted(set(captions))
    with torch.no_grad():
        for s in tqdm(range(0, len(uniq), batch_size), desc="text cache", unit="batch", leave=False):
            chunk = uniq[s : s + batch_size]
            enc = encode_prompts(b.text_encoders, b.tokenizers, chunk, sdxl=b.is_sdxl, clip_skip=clip_skip, device=device)
            for j, c in enumerate(chunk):
                table[c] = {k: v[j].detach().cpu() for k, v in enc.items()}
    return table


def build_batch_feed(recipe, bundle, accelerator) -> BatchFeed:
    """The run's `TrainData` (class images rendered first when asked), this process' sampler shard and,
    when wanted, the text-embedding table."""
    acc = accelerator
    # [dataset] reg_prompt: the base renders the class images (cached) and they become the reg set
    recipe = ensure_class_images(recipe, bundle, acc)
    # [dataset] reg_from_captions: the base renders each concept caption without the trigger (cached), joined to reg_path
    recipe = ensure_caption_priors(recipe, bundle, acc)
    data = build_train_data(
        recipe, vae=bundle.vae, device=acc.device, dtype=bundle.vae.dtype, cache=recipe.cache.latents,
        num_processes=acc.num_processes, process_index=acc.process_index, barrier=acc.wait_for_everyone,
    )
    sampler = BucketBatchSampler(data.bucket_ids, recipe.train.batch_size, recipe.seed, acc.num_processes, acc.process_index)
    text_cached = _text_cache_wanted(recipe, data.stats.static_captions)
    table = None
    if text_cached:
        ds = data.dataset
        # The dataset's own caption rule (trigger word on concept images only), so every cached key is hit.
        captions = [ds.transform.for_record(s.record, random.Random(0)) for s in ds.samples]
        if data.validation is not None:
            v = data.validation
            captions += [v.transform.for_record(s.record, random.Random(0)) for s in v.samples]
        table = _encode_all(bundle, captions, recipe.model.clip_skip, acc.device)
    return BatchFeed(data, sampler, text_cached=text_cached, text_embeds=table)
