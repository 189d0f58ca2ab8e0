"""One training forward pass: batch -> latents -> noisy latents -> U-Net -> loss.

Randomness is per sample, from a generator seeded by (run seed, global step, dataset index). That makes
the noise and timestep of a sample independent of which process or which batch position it lands in:
a resumed run draws exactly what the uninterrupted run drew, and a 2-process run with the same global
batch computes the same loss terms as a 1-process run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lora_kit.models.text import encode_prompts, sdxl_time_ids
from lora_kit.train.loss import add_noise, diffusion_loss, sample_noise, sample_timesteps, target_for


def sample_generator(seed: int, step: int, index: int) -> torch.Generator:
    # A fixed odd multiplier mix; any injective-enough map of (seed, step, index) works.
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 10_007 + index * 7919) % (2**63 - 1))


@dataclass
class StepContext:
    unet: object
    vae: object
    text_encoders: list
    tokenizers: list
    alphas_cumprod: torch.Tensor
    prediction_type: str
    sdxl: bool
    clip_skip: int
    weight_dtype: torch.dtype
    device: torch.device
    seed: int
    noise_offset: float = 0.0
    min_timestep: int = 0
    max_timestep: int = 1000
    min_snr_gamma: float = 0.0
    prior_loss_weight: float = 1.0


def batch_latents(ctx: StepContext, batch: dict, gens: list[torch.Generator]) -> torch.Tensor:
    """Scaled latents: from the cache (sampled and scaled by the dataset), or encoded now (VAE frozen)."""
    if "latents" in batch:
        return batch["latents"].to(ctx.device, ctx.weight_dtype)
    from lora_kit.data.cache import scale_latents

    vae = ctx.vae
    px = batch["pixel_values"].to(ctx.device, vae.dtype)
    with torch.no_grad():
        dist = vae.encode(px).latent_dist
    eps = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in gens]).to(dist.mean.device)
    lat = (dist.mean + dist.std * eps).float()
    return scale_latents(lat, vae.config).to(ctx.weight_dtype)


def batch_conditioning(ctx: StepContext, batch: dict) -> dict[str, torch.Tensor]:
    if "prompt_embeds" in batch:  # static captions, cached by the data pipeline
        cond = {k: batch[k].to(ctx.device, ctx.weight_dtype) for k in ("prompt_embeds", "pooled_prompt_embeds") if k in batch}
    else:
        cond = encode_prompts(ctx.text_encoders, ctx.tokenizers, list(batch["caption"]), sdxl=ctx.sdxl, clip_skip=ctx.clip_skip, device=ctx.device)
    return cond


def unet_kwargs(ctx: StepContext, batch: dict, cond: dict) -> dict:
    kw = {"encoder_hidden_states": cond["prompt_embeds"].to(ctx.weight_dtype)}
    if ctx.sdxl:
        time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], batch["target_size"])
        kw["added_cond_kwargs"] = {
            "text_embeds": cond["pooled_prompt_embeds"].to(ctx.weight_dtype),
            "time_ids": time_ids.to(ctx.device, ctx.weight_dtype),
        }
    return kw


def forward_loss(ctx: StepContext, batch: dict, step: int, fixed_timesteps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Loss of one batch; `fixed_timesteps` (validation) overrides the sampled ones."""
    indices = [int(i) for i in batch["index"]]
    gens = [sample_generator(ctx.seed, step, i) for i in indices]
    latents = batch_latents(ctx, batch, gens)
    noise = torch.cat([sample_noise(latents[j : j + 1], g, ctx.noise_offset) for j, g in enumerate(gens)])
    if fixed_timesteps is None:
        t = torch.cat([sample_timesteps(1, g, ctx.min_timestep, ctx.max_timestep) for g in gens])
    else:
        t = fixed_timesteps.expand(latents.shape[0]).clone()
    t = t.to(ctx.device)
    noisy = add_noise(latents, noise, t, ctx.alphas_cumprod)
    cond = batch_conditioning(ctx, batch)
    pred = ctx.unet(noisy, t, **unet_kwargs(ctx, batch, cond)).sample
    target = target_for(ctx.prediction_type, latents, noise, t, ctx.alphas_cumprod)
    is_reg = torch.as_tensor(batch.get("is_reg", [False] * len(indices)))
    loss = diffusion_loss(
        pred, target, t, ctx.alphas_cumprod,
        prediction_type=ctx.prediction_type, min_snr_gamma=ctx.min_snr_gamma,
        is_reg=is_reg, prior_loss_weight=ctx.prior_loss_weight,
    )
    return loss, {"timesteps": t, "batch_size": latents.shape[0]}
