"""`lora-kit cache RECIPE [section.key=value ...]`: fill the latent cache of a recipe before training.

Useful on a machine where the VAE pass should happen once (e.g. before a multi-GPU run, or to check a
dataset end to end). The model comes from `models.loading.load_for_training`, the trainer's own loader,
so the VAE has exactly the dtype `lora-kit train` gives it (fp32 for SDXL's stock VAE, else the recipe's
mixed precision): its dtype is part of the cache key, and a cache built in another dtype would not be
reused. Text embeddings are not cached here: the trainer keeps them in memory.
"""

from __future__ import annotations

import argparse

import torch

from lora_kit.config.load import load_recipe
from lora_kit.data.dataset import build_train_data
from lora_kit.models.loading import load_for_training


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe TOML file or the name of a shipped recipe")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, as for `lora-kit train`")
    p.add_argument("--device", default="", help="cuda, cpu, ... (default: cuda when available)")


def run(args) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    if not recipe.cache.latents:
        print("[cache] latents = false: nothing to cache")
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae = load_for_training(recipe.model, recipe.train.mixed_precision, device).vae
    data = build_train_data(recipe, vae=vae, device=device, dtype=vae.dtype)
    st = data.stats
    lc = st.latent_cache
    print(f"{st.num_train_files} train + {st.num_reg_files} reg + {st.num_validation_images} validation images, "
          f"{len(st.bucket_histogram)} buckets, {st.skipped} skipped")
    print(f"latents: {lc['computed']} computed, {lc['cached']} already cached, {lc['failed']} failed "
          f"({lc['total']} entries, flip_aug={'on' if recipe.dataset.flip_aug else 'off'})")
    return 0
