"""The diffusion training loss as pure functions (no model, no scheduler object, no global RNG).

Everything random takes an explicit `torch.Generator`, so a resumed run draws the same noise and
timesteps as an uninterrupted one. References: epsilon/v targets as in diffusers' DDPMScheduler
(`get_velocity`), min-SNR-gamma weighting from Hang et al. 2023 in the form diffusers' scripts and kohya
use: min(SNR, gamma)/SNR for epsilon, min(SNR, gamma)/(SNR + 1) for v-prediction.
"""

from __future__ import annotations

import torch


def sample_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise, plus per-channel offset noise (Guttenberg's trick) when noise_offset > 0."""
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    if noise_offset:
        offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator, dtype=torch.float32)
        noise = noise + noise_offset * offset.to(latents.device, latents.dtype)
    return noise


def sample_timesteps(batch: int, generator: torch.Generator, min_timestep: int = 0, max_timestep: int = 1000) -> torch.Tensor:
    """Uniform integer timesteps in [min_timestep, max_timestep)."""
    return torch.randint(min_timestep, max_timestep, (batch,), generator=generator, dtype=torch.long)


def _gather(values: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = values.to(like.device, torch.float32)[timesteps.to(like.device)]
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(latents, noise, timesteps, alphas_cumprod) -> torch.Tensor:
    """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps (DDPM forward process)."""
    a = _gather(alphas_cumprod, timesteps, latents)
    return (a.sqrt() * latents.float() + (1 - a).sqrt() * noise.float()).to(latents.dtype)


def target_for(prediction_type: str, latents, noise, timesteps, alphas_cumprod) -> torch.Tensor:
    """What the U-Net should predict: eps, or v = sqrt(a_t) eps - sqrt(1 - a_t) x_0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        a = _gather(alphas_cumprod, timesteps, latents)
        return (a.sqrt() * noise.float() - (1 - a).sqrt() * latents.float()).to(latents.dtype)
    raise ValueError(f"unsupported prediction_type {prediction_type!r} (expected epsilon or v_prediction)")


def snr(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    # Indexed where the schedule lives (the device, in training): a `.cpu()` here would stall every step.
    a = alphas_cumprod.to(torch.float32)[timesteps.to(alphas_cumprod.device)]
    return a / (1.0 - a)


def min_snr_weights(timesteps, alphas_cumprod, gamma: float, prediction_type: str) -> torch.Tensor:
    s = snr(timesteps, alphas_cumprod)
    clipped = torch.minimum(s, torch.full_like(s, gamma))
    return clipped / (s + 1.0) if prediction_type == "v_prediction" else clipped / s


def diffusion_loss(
    model_pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    prediction_type: str = "epsilon",
    min_snr_gamma: float = 0.0,
    is_reg: torch.Tensor | None = None,
    prior_loss_weight: float = 1.0,
) -> torch.Tensor:
    """Mean-squared error per sample, min-SNR weighted, prior-preservation samples weighted, batch mean."""
    per_sample = ((model_pred.float() - target.float()) ** 2).mean(dim=tuple(range(1, model_pred.ndim)))
    weights = torch.ones_like(per_sample)
    if min_snr_gamma > 0:
        weights = weights * min_snr_weights(timesteps, alphas_cumprod, min_snr_gamma, prediction_type).to(weights.device)
    if is_reg is not None:
        reg = is_reg.to(weights.device, torch.bool)
        weights = torch.where(reg, weights * prior_loss_weight, weights)
    return (per_sample * weights).mean()
