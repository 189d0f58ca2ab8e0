"""Checks run before the expensive part of `lora-kit train` (before the model loads and latents cache).

`checks.check_recipe` covers what the recipe alone decides; this module covers what needs the disk or
the model's configuration: input paths, every output location (not a file, writable, room for one
checkpoint), sample sizes against the model's latent stride, and `target_modules` against the U-Net's
module names. The U-Net is built from its config on the meta device (accelerate's init_empty_weights),
so no weights are read or allocated. Each problem is one line naming the file and key.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from huggingface_hub import try_to_load_from_cache

from lora_kit.adapters.inject import CONV_TARGETS, unet_target_modules
from lora_kit.config.checks import _fail, check_paths
from lora_kit.config.schema import Recipe
from lora_kit.models.loading import resolve_model
from lora_kit.paths import cache_dir, is_builtin
from lora_kit.utils import nearest_existing

MARGIN = 16 << 20  # bytes kept free beyond one checkpoint's estimate (recipe.toml, summary, logs)


def check_before_training(r: Recipe) -> None:
    check_paths(r)
    # Under `accelerate launch` the main process checks the model alone: a builtin preset is written to
    # the cache on first use, and every rank writing it at once would race (load_model does it
    # main_process_first for the same reason). A refusal there ends the launch.
    configs = model_configs(r) if int(os.environ.get("RANK", "0")) == 0 else None
    lora_params = check_model(r, *configs) if configs else 0
    check_locations(r, checkpoint_bytes(r, lora_params))


# --------------------------------------------------------------------------------------------- locations


def check_writable_folder(r: Recipe, key: str, folder: Path, need_bytes: int = 0) -> None:
    """`folder` is (or can become) a writable folder with `need_bytes` free."""
    folder = Path(folder).expanduser()
    base = nearest_existing(folder)
    if not base.is_dir():
        _fail(r, key, f"{base} is a file, expected a folder")
    try:  # os.access ignores ACLs and read-only mounts; a real file says what the disk will say
        fd, probe = tempfile.mkstemp(prefix=".lora-kit-probe.", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        _fail(r, key, f"{folder} is not writable ({exc.strerror} in {base})")
    free = shutil.disk_usage(base).free
    if need_bytes and free < need_bytes:
        _fail(r, key, f"{folder}: {free >> 20} MiB free, one checkpoint needs about {need_bytes >> 20} MiB")


def check_locations(r: Recipe, checkpoint_size: int = 0) -> None:
    check_writable_folder(r, "output_dir", Path(r.output_dir), checkpoint_size)
    if r.cache.latents or r.cache.text != "off":
        check_writable_folder(r, "[cache] dir", Path(r.cache.dir) if r.cache.dir else cache_dir() / "cache")


def checkpoint_bytes(r: Recipe, lora_params: int) -> int:
    """One checkpoint (fp32 adapter + optimizer state, at most 8 bytes per parameter for AdamW) and the
    two exported files, plus a margin."""
    return lora_params * (4 + 8 + 2 * 4) + MARGIN if lora_params else MARGIN


# ------------------------------------------------------------------------------------------------- model


def model_configs(r: Recipe) -> tuple[dict, dict] | None:
    """(U-Net config, VAE config) read without weights, or None when they cannot be read cheaply
    (single-file checkpoints, a Hub id not in the local cache): the run then finds out at load time."""
    spec = r.model.pretrained
    if is_builtin(spec):
        spec = resolve_model(spec)  # the shipped folder, or the tiny preset written once to the cache
    folder = Path(spec).expanduser()
    try:
        if folder.is_dir():
            unet = json.loads((folder / "unet" / "config.json").read_text())
            vae = json.loads((Path(r.model.vae) if r.model.vae and Path(r.model.vae).is_dir() else folder / "vae")
                             .joinpath("config.json").read_text())
            return unet, vae
        if spec.endswith((".safetensors", ".ckpt")):
            return None
        found = [try_to_load_from_cache(spec, f"{sub}/config.json", revision=r.model.revision or None)
                 for sub in ("unet", "vae")]
        if all(isinstance(f, str) for f in found):
            return json.loads(Path(found[0]).read_text()), json.loads(Path(found[1]).read_text())
    except (OSError, ValueError):
        return None
    return None


def latent_stride(vae_config: dict) -> int:
    """Pixels per latent cell; the pipelines also require multiples of 8."""
    return max(8, 2 ** (len(vae_config.get("block_out_channels", [0])) - 1))


def check_model(r: Recipe, unet_config: dict, vae_config: dict) -> int:
    """Sample sizes against the latent stride and target modules against the U-Net; returns the number
    of LoRA parameters (for the checkpoint size estimate)."""
    stride = latent_stride(vae_config)
    for key, val in (("width", r.sample.width), ("height", r.sample.height)):
        if val % stride:
            _fail(r, f"[sample] {key}", f"expected a multiple of {stride} (this model's latent stride), got {val}")
    if r.sample.prompts and not (r.sample.width and r.sample.height) and r.buckets.resolution % stride:
        _fail(r, "[buckets] resolution", f"samples render at the bucket resolution, which must be a multiple of "
                                         f"{stride} for this model (or set [sample] width/height), got {r.buckets.resolution}")
    return _check_targets(r, unet_config)


def _check_targets(r: Recipe, unet_config: dict) -> int:
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
    targets = unet_target_modules(r.network)
    layers = {n: m for n, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    # peft's suffix rule: a target matches a module whose name is it or ends with "." + it.
    matched = {t: [n for n in layers if n == t or n.endswith("." + t)] for t in targets}
    missing = [t for t, names in matched.items() if not names]
    if missing:
        _fail(r, "[network] target_modules", f"{', '.join(map(repr, missing))} match no Linear/Conv2d layer of this "
                                             f"U-Net (names end like 'to_q', 'attn1.to_k', 'ff.net.2', 'conv1')")
    total = 0
    for t, names in matched.items():
        # conv_rank applies to the ResNet convolutions only (peft rank_pattern); other Conv2d layers
        # (1x1 proj_in/proj_out of older U-Nets) take the rank.
        rank = r.network.conv_rank if (t in CONV_TARGETS and r.network.conv_rank) else r.network.rank
        for n in set(names):
            m = layers[n]
            if isinstance(m, torch.nn.Linear):
                total += rank * (m.in_features + m.out_features)
            else:  # lora_A: the layer's kernel into `rank` channels, lora_B: 1x1 back out
                total += rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
    return total
