"""On-disk caches: VAE latents per (image content, bucket, crop, flip, VAE) and text embeddings per caption.

What is stored: the VAE posterior's `mean` and `std` (unscaled), not one sample. kohya stores one sample,
which freezes the VAE's sampling noise for the whole run; storing mean/std lets the dataset draw a fresh,
seeded sample every epoch, exactly what encoding on the fly would give. Scaling (`scaling_factor`, and
`shift_factor` for VAEs that have one) is applied at use time by `scale_latents`, so one cache serves
any trainer. Tensors are float32 safetensors, one file per entry, written atomically (temp + rename).

Keys (sha256 of the joined parts, the file name is the key):
- latents: sha256(image bytes) + bucket + resized size + crop (left, top) + flip + VAE identity;
- text: encoder identity + caption.
- masks (`[loss] masked`): sha256(image bytes) + sha256(mask file bytes) or "alpha" + bucket + resized size
  + crop + flip + VAE downscale factor; no VAE identity (a mask is the image's geometry, not the VAE's).
A changed image, mask, bucket, crop, flip or VAE therefore gets a new key and only those entries are computed
again; unreadable/corrupt cache files are recomputed (kohya #2362) instead of crashing the run. Masks have
keys of their own, beside the latents: switching `masked` on or editing a mask never re-encodes a latent.

VAE identity = sha256 of its config and its whole state dict (names, dtypes, shapes, bytes). Hashing every
weight is exact — a fine-tuned or fp16-fixed VAE never reuses another's latents — and costs about a
second for an 84M-parameter SD VAE, once per run. Casting the VAE to another dtype changes the identity
on purpose: fp16 and fp32 latents differ.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from lora_kit.errors import UserError
from lora_kit.utils import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

CACHE_VERSION = "1"  # bump when the stored layout changes; part of every key


# ---------------------------------------------------------------------------------------------- identities


def module_identity(*modules, extra: str = "") -> str:
    """sha256 over configs and full state dicts of diffusers/transformers modules (and `extra`)."""
    h = hashlib.sha256(f"lora-kit-cache-v{CACHE_VERSION}|{extra}".encode())
    for module in modules:
        config = getattr(module, "config", None)
        if config is not None:
            as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
            h.update(json.dumps(as_dict, sort_keys=True, default=str).encode())
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def latent_key(content_sha: str, placement, flip: bool, vae_id: str) -> str:
    p = placement
    parts = [
        CACHE_VERSION,
        content_sha,
        f"{p.bucket[0]}x{p.bucket[1]}",
        f"{p.resized[0]}x{p.resized[1]}",
        f"{p.crop_left},{p.crop_top}",
        f"flip={int(bool(flip))}",
        vae_id,
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def mask_key(content_sha: str, mask_sha: str, placement, flip: bool, factor: int) -> str:
    """Key of an image's mask at latent resolution; `mask_sha` is the mask file's sha256 or "alpha"."""
    p = placement
    parts = [CACHE_VERSION, "mask", content_sha, mask_sha, f"{p.bucket[0]}x{p.bucket[1]}", f"{p.resized[0]}x{p.resized[1]}",
             f"{p.crop_left},{p.crop_top}", f"flip={int(bool(flip))}", f"f={factor}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def vae_downscale(vae) -> int:
    """Pixels per latent pixel along a side: 2 ** (number of VAE blocks - 1), diffusers' vae_scale_factor."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


class ContentHasher:
    """sha256 of an image's bytes, memoised by (path, size, mtime, ctime, inode) in a JSON index so a
    second run does not re-read every image; a touched, rewritten or replaced file is hashed again."""

    def __init__(self, index_path: Optional[Path] = None):
        self.index_path = index_path
        self._index: dict[str, list] = {}
        self._dirty = False
        if index_path is not None and index_path.is_file():
            try:
                self._index = json.loads(index_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                self._index = {}  # a damaged index only costs re-hashing

    def sha(self, record) -> str:
        key = record.stat_key()
        if key is not None:
            path, stamp = key
            hit = self._index.get(path)
            if hit and hit[:-1] == stamp:
                return hit[-1]
        digest = hashlib.sha256(record.read_bytes()).hexdigest()
        if key is not None:
            self._index[path] = [*stamp, digest]
            self._dirty = True
        return digest

    def save(self) -> None:
        if self._dirty and self.index_path is not None:
            atomic_write_json(self.index_path, self._index)
            self._dirty = False


# ---------------------------------------------------------------------------------------------- latents


@dataclass
class LatentItem:
    """One latent to have in the cache: its key, a function returning its (3, H, W) pixels in [-1, 1],
    and a group (the bucket) — items of one group have equal shapes and are encoded together."""

    key: str
    pixels: Callable[[], torch.Tensor]
    group: tuple


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: Optional[dict] = None) -> None:
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _load_tensors(path: Path) -> Optional[dict[str, torch.Tensor]]:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError, ValueError) as exc:
        log.warning("cache file %s is unreadable (%s); recomputing it", path.name, exc)
        return None


class LatentCache:
    """`dir/<vae id[:16]>/<key[:2]>/<key>.safetensors` holding `mean` and `std`, both (C, h, w) float32."""

    def __init__(self, directory: str | os.PathLike, vae_id: str):
        self.vae_id = vae_id
        self.directory = Path(directory)
        self.root = self.directory / "latents" / vae_id[:16]

    @functools.cached_property
    def hasher(self) -> ContentHasher:
        # lazy: DataLoader workers only read entries and need not parse the (large) hash index
        return ContentHasher(self.directory / "content-hashes.json")

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def load(self, key: str) -> dict[str, torch.Tensor]:
        tensors = _load_tensors(self.path(key))
        if tensors is None or "mean" not in tensors or "std" not in tensors:
            raise UserError(f"latent cache entry {key[:12]} is missing or damaged; run `lora-kit cache` again")
        return tensors

    def save(self, key: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        _save_tensors(self.path(key), {"mean": mean, "std": std}, {"vae": self.vae_id[:16], "v": CACHE_VERSION})

    def mask_path(self, key: str) -> Path:
        return self.directory / "masks" / key[:2] / f"{key}.safetensors"

    def save_mask(self, key: str, mask: torch.Tensor) -> None:
        _save_tensors(self.mask_path(key), {"mask": mask}, {"v": CACHE_VERSION})

    def load_mask(self, key: str) -> torch.Tensor:
        tensors = _load_tensors(self.mask_path(key))
        if tensors is None or "mask" not in tensors:
            raise UserError(f"mask cache entry {key[:12]} is missing or damaged; run `lora-kit cache` again")
        return tensors["mask"]

    def is_valid(self, key: str) -> bool:
        """Present with a sound header (safetensors checks the data length against it; no tensor read)."""
        if not self.has(key):
            return False
        try:
            with safe_open(str(self.path(key)), "pt") as f:
                return {"mean", "std"} <= set(f.keys())
        except (OSError, SafetensorError, ValueError) as exc:
            log.warning("cache file %s is unreadable (%s); recomputing it", self.path(key).name, exc)
            return False


def sample_latents(mean: torch.Tensor, std: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One draw from the cached posterior N(mean, std^2) (what latent_dist.sample() would return)."""
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    return mean + std * noise


def scale_latents(latents: torch.Tensor, vae_config) -> torch.Tensor:
    """VAE latents -> U-Net latents: (x - shift_factor) * scaling_factor (shift only where the VAE has one)."""
    get = vae_config.get if isinstance(vae_config, dict) else lambda k, d=None: getattr(vae_config, k, d)
    shift = get("shift_factor", None) or 0.0
    return (latents - shift) * get("scaling_factor", 1.0)


@torch.no_grad()
def encode_posterior(vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE posterior for a (B, 3, H, W) batch in [-1, 1]."""
    dist = vae.encode(pixels).latent_dist
    return dist.mean, dist.std


AUTO_VAE_PIXELS = 2 * 1024 * 1024  # pixels per VAE encode when vae_batch_size is 0 (auto)


def vae_batch_for(group: tuple, vae_batch_size: int) -> int:
    """Images per encode for a bucket (W, H): the user's number, or as many as fit in AUTO_VAE_PIXELS."""
    if vae_batch_size:
        return vae_batch_size
    return max(1, min(8, AUTO_VAE_PIXELS // (group[0] * group[1])))


def precompute_latents(
    items: Sequence[LatentItem],
    vae,
    cache: LatentCache,
    vae_batch_size: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    num_processes: int = 1,
    process_index: int = 0,
) -> dict:
    """Encode every item missing from the cache; `vae` must already sit on `device` in `dtype` (its
    identity, hence the cache key, includes its dtype). With several processes each encodes the missing
    items it owns (by key); the caller waits for all (accelerate's wait_for_everyone) after.
    Returns {"total", "cached", "computed", "failed": [keys whose image could not be decoded]}."""
    missing = [it for it in items if not cache.is_valid(it.key)]
    seen: set[str] = set()
    missing = [it for it in missing if not (it.key in seen or seen.add(it.key))]
    # Each key has one owner process, chosen from the key itself, not from its position in `missing`:
    # processes that check the cache at slightly different times still split the work without a gap.
    mine = [it for it in missing if int(it.key[:8], 16) % num_processes == process_index]
    groups: dict[tuple, list[LatentItem]] = {}
    for it in mine:
        groups.setdefault(it.group, []).append(it)
    failed: list[str] = []
    bar = tqdm(total=len(mine), desc="caching latents", unit="img", disable=not mine)
    for bucket, group in groups.items():
        batch_size = vae_batch_for(bucket, vae_batch_size)
        for start in range(0, len(group), batch_size):
            chunk, pixels = _render_chunk(group[start:start + batch_size], failed)
            if chunk:
                mean, std = encode_posterior(vae, torch.stack(pixels).to(device, dtype))
                if not torch.isfinite(mean).all():
                    raise UserError("NaN/inf in VAE latents: use an fp16-fixed VAE ([model] vae) or fp32 caching")
                for it, m, s in zip(chunk, mean, std):
                    cache.save(it.key, m, s)
            bar.update(min(batch_size, len(group) - start))
    bar.close()
    computed = len(mine) - len(failed)
    return {"total": len(items), "cached": len(items) - len(missing), "computed": computed, "failed": failed}


@dataclass
class MaskItem:
    """One mask to have in the cache: its key, the key of its image's latents (same image, placement and
    flip), and a function returning the (1, h, w) mask at latent resolution."""

    key: str
    latent_key: str
    render: Callable[[], torch.Tensor]


def precompute_masks(items: Sequence[MaskItem], cache: LatentCache, num_processes: int = 1, process_index: int = 0) -> int:
    """Write the missing mask entries of the latents this process owns (precompute_latents' split, so their
    latents are already written): an image whose latents failed to decode is skipped (the trainer drops it)
    rather than stopping the run. No VAE: masks are only resized. Returns how many entries were written."""
    done = 0
    for it in {it.key: it for it in items}.values():
        if int(it.latent_key[:8], 16) % num_processes != process_index or _mask_entry_ok(cache.mask_path(it.key)):
            continue
        if not cache.has(it.latent_key):
            continue
        cache.save_mask(it.key, it.render())
        done += 1
    return done


def _mask_entry_ok(path: Path) -> bool:
    """Present with a sound header holding `mask` (no tensor read)."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            return "mask" in f.keys()
    except (OSError, SafetensorError, ValueError):
        return False


def _render_chunk(chunk: list[LatentItem], failed: list[str]) -> tuple[list[LatentItem], list[torch.Tensor]]:
    """Pixels of a chunk; an image that fails to decode now (damage the scan could not see) is reported
    in `failed` by key instead of stopping the whole cache run."""
    ok, pixels = [], []
    for it in chunk:
        try:
            pixels.append(it.pixels())
            ok.append(it)
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError...
            log.warning("cannot decode an image while caching (%s: %s); it is skipped", type(exc).__name__, exc)
            failed.append(it.key)
    return ok, pixels


# ---------------------------------------------------------------------------------------------- text


class TextCache:
    """Text-encoder outputs per caption: `dir/text/<encoder id[:16]>/<key[:2]>/<key>.safetensors`.

    Only meaningful for static captions (no shuffle / tag dropout / caption dropout): the caller checks
    `CaptionTransform.is_static`. `encode_fn(list[str]) -> dict[str, Tensor]` returns batched tensors
    (e.g. prompt_embeds, pooled_prompt_embeds); each caption's slice along dim 0 is stored.
    """

    def __init__(self, directory: str | os.PathLike, encoder_id: str):
        self.encoder_id = encoder_id
        self.root = Path(directory) / "text" / encoder_id[:16]

    def key(self, caption: str) -> str:
        return hashlib.sha256(f"{CACHE_VERSION}|{self.encoder_id}|{caption}".encode()).hexdigest()

    def path(self, caption: str) -> Path:
        k = self.key(caption)
        return self.root / k[:2] / f"{k}.safetensors"

    def get_or_compute(
        self, captions: Sequence[str], encode_fn: Callable[[list[str]], dict], batch_size: int = 32
    ) -> list[dict[str, torch.Tensor]]:
        found: dict[str, dict] = {}
        for cap in dict.fromkeys(captions):
            path = self.path(cap)
            if path.is_file():
                tensors = _load_tensors(path)
                if tensors is not None:
                    found[cap] = tensors
        todo = [c for c in dict.fromkeys(captions) if c not in found]
        bar = tqdm(total=len(todo), desc="caching text embeddings", unit="caption", disable=not todo)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            with torch.no_grad():
                out = encode_fn(chunk)
            for i, cap in enumerate(chunk):
                tensors = {name: value[i] for name, value in out.items()}
                _save_tensors(self.path(cap), tensors, {"v": CACHE_VERSION})
                found[cap] = {k: v.detach().to("cpu", torch.float32) for k, v in tensors.items()}
            bar.update(len(chunk))
        bar.close()
        return [found[c] for c in captions]
