"""`lora-kit cache RECIPE [section.key=value ...]`: fill the latent cache of a recipe before training.

Useful on a machine where the VAE pass should happen once (e.g. before a multi-GPU run, or to check a
dataset end to end). The VAE is loaded and cast exactly as `lora-kit train` does (fp32 for SDXL's stock
VAE, else the recipe's mixed precision), because its dtype is part of the cache key: a cache built in
another dtype would not be reused. Text embeddings are not cached here: the trainer keeps them in memory.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe TOML file or the name of a shipped recipe")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, as for `lora-kit train`")
    p.add_argument("--device", default="", help="cuda, cpu, ... (default: cuda when available)")


def _vae(recipe, device):
    import torch

    from lora_kit.models.loading import load_model

    m = recipe.model
    bundle = load_model(m.pretrained, revision=m.revision or None, variant=m.variant or None,
                        single_file_config=m.single_file_config or None)
    vae = bundle.vae
    if m.vae:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(m.vae)
    weight = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[recipe.train.mixed_precision]
    # same rule as the trainer: the stock SDXL VAE overflows in fp16, so it stays fp32
    dtype = torch.float32 if (bundle.is_sdxl and not m.vae) else weight
    return vae.requires_grad_(False).eval().to(device=device, dtype=dtype), dtype


def run(args) -> int:
    import torch

    from lora_kit.config.load import load_recipe
    from lora_kit.data.dataset import build_train_data

    recipe = load_recipe(args.recipe, args.overrides)
    if not recipe.cache.latents:
        print("[cache] latents = false: nothing to cache")
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae, dtype = _vae(recipe, device)
    data = build_train_data(recipe, vae=vae, device=device, dtype=dtype)
    st = data.stats
    lc = st["latent_cache"]
    print(f"{st['num_train_files']} train + {st['num_reg_files']} reg + {st['num_validation_images']} validation images, "
          f"{len(st['bucket_histogram'])} buckets, {st['skipped']} skipped")
    print(f"latents: {lc['computed']} computed, {lc['cached']} already cached, {lc['failed']} failed "
          f"({lc['total']} entries, flip_aug={'on' if recipe.dataset.flip_aug else 'off'})")
    return 0
