"""One training forward pass: batch -> latents -> noisy latents -> U-Net -> loss.

Randomness is per sample, from a generator seeded by (run seed, global step, dataset index). That makes
the noise and timestep of a sample independent of which process or which batch position it lands in:
a resumed run draws exactly what the uninterrupted run drew, and a 2-process run with the same global
batch computes the same loss terms as a 1-process run.

The step never waits for the device: the per-sample draws are made on the CPU (CPU generators are what
make them reproducible on any device) into one buffer per kind, and each buffer goes to the device in one
non-blocking copy from pinned memory. Nothing reads a device value back (no `.item()`, no `.cpu()`): the
loop reads the loss at its log interval only. tests/test_step_trace.py checks both on the op trace.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from lora_kit.adapters.inject import adapters_disabled, tuner_layers
from lora_kit.config.schema import LossConfig
from lora_kit.data.cache import scale_latents
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
    loss: LossConfig = field(default_factory=LossConfig)  # the recipe's [loss]: noise, timesteps, weighting, type
    # (U-Net, text encoders) without the DDP/compile wrappers, for the base's forward of [loss] prior_target =
    # "base" (no collectives: it trains nothing); None = `unet` and `text_encoders` as they are
    plain: tuple | None = None
    plain_layers: list | None = None  # their peft adapter layers (tuner_layers), found once; None = found per step


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One host-to-device copy that does not stall the host: from pinned memory, non-blocking, on CUDA."""
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, dtype or t.dtype, non_blocking=True)


def draw_noise(gens: list[torch.Generator], shape: tuple, noise_offset: float) -> torch.Tensor:
    """(B, *shape) float32 noise on the CPU, sample j from gens[j] (the draws `sample_noise` makes per sample)."""
    like = torch.empty((1, *shape))
    return torch.cat([sample_noise(like, g, noise_offset) for g in gens])


def batch_latents(ctx: StepContext, batch: dict, gens: list[torch.Generator]) -> torch.Tensor:
    """Scaled latents: from the cache (sampled and scaled by the dataset), or encoded now (VAE frozen)."""
    if "latents" in batch:
        return to_device(batch["latents"], ctx.device, ctx.weight_dtype)
    vae = ctx.vae
    px = to_device(batch["pixel_values"], ctx.device, vae.dtype)
    with torch.no_grad():
        dist = vae.encode(px).latent_dist
    eps = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in gens])
    lat = (dist.mean + dist.std * to_device(eps, dist.mean.device)).float()
    return scale_latents(lat, vae.config).to(ctx.weight_dtype)


def batch_conditioning(ctx: StepContext, batch: dict) -> dict[str, torch.Tensor]:
    if "prompt_embeds" in batch:  # static captions, cached by the data pipeline
        return {k: to_device(batch[k], ctx.device, ctx.weight_dtype) for k in ("prompt_embeds", "pooled_prompt_embeds") if k in batch}
    return encode_prompts(ctx.text_encoders, ctx.tokenizers, list(batch["caption"]), sdxl=ctx.sdxl, clip_skip=ctx.clip_skip, device=ctx.device)


def unet_kwargs(ctx: StepContext, batch: dict, cond: dict) -> dict:
    kw = {"encoder_hidden_states": cond["prompt_embeds"].to(ctx.weight_dtype)}
    if ctx.sdxl:
        time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], batch["target_size"])
        kw["added_cond_kwargs"] = {
            "text_embeds": cond["pooled_prompt_embeds"].to(ctx.weight_dtype),
            "time_ids": to_device(time_ids, ctx.device, ctx.weight_dtype),
        }
    return kw


def base_targets(ctx: StepContext, batch: dict, reg: list[bool], noisy: torch.Tensor, t: torch.Tensor,
                 target: torch.Tensor) -> torch.Tensor:
    """`target` with each prior row replaced by the base model's prediction (adapters off) for the same noisy
    latent, timestep and caption ([loss] prior_target = "base"). The noise a prior picture was noised with is
    only a noisy estimate of what the base predicts for it; the base's own output is the exact target for
    "draw this prompt as before", so the loss sees the adapter's drift on prompts without the trigger and
    nothing else. Runs on the modules inside the DDP wrapper, under no_grad: no collectives, no graph."""
    rows = [j for j, r in enumerate(reg) if r]
    if not rows:
        return target
    unet, tes = ctx.plain or (ctx.unet, ctx.text_encoders)
    pick = torch.tensor(rows)
    sub = {k: v.index_select(0, pick) if torch.is_tensor(v) else [v[j] for j in rows]
           for k, v in batch.items() if k not in ("latents", "pixel_values", "mask")}
    idx = to_device(pick, ctx.device)
    base_ctx = dataclasses.replace(ctx, unet=unet, text_encoders=tes)
    with torch.no_grad(), adapters_disabled(ctx.plain_layers if ctx.plain_layers is not None else tuner_layers([unet, *tes])):
        cond = batch_conditioning(base_ctx, sub)
        base = unet(noisy.index_select(0, idx), t.index_select(0, idx), **unet_kwargs(base_ctx, sub, cond)).sample
    return target.index_copy(0, idx, base.to(target.dtype))


def forward_loss(ctx: StepContext, batch: dict, step: int, fixed_timesteps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Loss of one batch; `fixed_timesteps` (validation) overrides the sampled ones."""
    indices = batch["index"].tolist()  # a host list, read without a per-element scalar op
    gens = [sample_generator(ctx.seed, step, i) for i in indices]
    latents = batch_latents(ctx, batch, gens)  # draws the VAE sample first when encoding now
    lc = ctx.loss
    noise = to_device(draw_noise(gens, tuple(latents.shape[1:]), lc.noise_offset), ctx.device, latents.dtype)
    if fixed_timesteps is None:
        t = torch.cat([sample_timesteps(1, g, lc.min_timestep, lc.max_timestep) for g in gens])
    else:
        t = fixed_timesteps.expand(len(indices)).clone()
    t = to_device(t, ctx.device)
    noisy = add_noise(latents, noise, t, ctx.alphas_cumprod)
    cond = batch_conditioning(ctx, batch)
    pred = ctx.unet(noisy, t, **unet_kwargs(ctx, batch, cond)).sample
    target = target_for(ctx.prediction_type, latents, noise, t, ctx.alphas_cumprod)
    is_reg, mask = batch.get("is_reg"), batch.get("mask")
    if lc.prior_target == "base" and is_reg is not None:
        target = base_targets(ctx, batch, is_reg.tolist(), noisy, t, target)
    loss = diffusion_loss(
        pred, target, t, ctx.alphas_cumprod,
        prediction_type=ctx.prediction_type, min_snr_gamma=lc.min_snr_gamma,
        is_reg=None if is_reg is None else to_device(is_reg, ctx.device), prior_loss_weight=lc.prior_loss_weight,
        loss_type=lc.type, huber_schedule=lc.huber_schedule, huber_c=lc.huber_c, huber_scale=lc.huber_scale,
        mask=None if mask is None else to_device(mask, ctx.device, torch.float32),  # [loss] masked: one copy per batch
    )
    return loss, {"timesteps": t, "batch_size": len(indices)}
