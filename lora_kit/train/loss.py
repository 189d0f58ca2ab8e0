"""The diffusion training loss as pure functions (no model, no scheduler object, no global RNG).

Everything random takes an explicit `torch.Generator`, so a resumed run draws the same noise and
timesteps as an uninterrupted one. References: epsilon/v targets as in diffusers' DDPMScheduler
(`get_velocity`), min-SNR-gamma weighting from Hang et al. 2023 in the form diffusers' scripts and kohya
use: min(SNR, gamma)/SNR for epsilon, min(SNR, gamma)/(SNR + 1) for v-prediction.

Loss types and Huber schedules are kohya-ss/sd-scripts' (`train_util.get_huber_threshold_if_needed`
and `conditional_loss`): "l2" (d^2), "huber" (pseudo-Huber 2c(sqrt(d^2 + c^2) - c)) and "smooth_l1"
(2(sqrt(d^2 + c^2) - c)), with c per sample from the timestep: "constant" c*scale, "exponential"
scale*exp(ln(c) t/T) (from scale at t=0 down to c*scale at t=T) or "snr" (1 - c)/(1 + sigma_t)^2 + c
with sigma_t = sqrt((1 - a_t)/a_t) (kohya applies no scale there; neither do we).

Masked loss: a (B, 1, h, w) mask in [0, 1] weights every latent pixel; each sample's loss is the
mask-weighted mean, sum(m l)/sum(m) over its pixels (OneTrainer's normalize_masked_area_loss, not
kohya's plain mean of m*l): a subject that fills a tenth of its picture is learned as strongly as one
that fills it all, and an all-white mask gives exactly the unmasked loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSS_TYPES = ("l2", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")


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


def huber_threshold(
    timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, schedule: str, huber_c: float, huber_scale: float = 1.0
) -> torch.Tensor:
    """kohya's per-sample Huber c, (B,) float32 on the schedule's device (no host round trip)."""
    t = timesteps.to(alphas_cumprod.device)
    if schedule == "constant":
        return torch.full(t.shape, huber_c * huber_scale, dtype=torch.float32, device=t.device)
    if schedule == "exponential":
        alpha = -math.log(huber_c) / alphas_cumprod.shape[0]  # T = num_train_timesteps
        return torch.exp(-alpha * t.to(torch.float32)) * huber_scale
    if schedule == "snr":
        a = alphas_cumprod.to(torch.float32)[t]
        sigmas = ((1.0 - a) / a) ** 0.5
        return (1 - huber_c) / (1 + sigmas) ** 2 + huber_c
    raise ValueError(f"unsupported huber_schedule {schedule!r} (expected one of {HUBER_SCHEDULES})")


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2", huber_c: torch.Tensor | None = None) -> torch.Tensor:
    """Unreduced float32 loss; `huber_c` (B,) for "huber" and "smooth_l1"."""
    diff = pred.float() - target.float()
    if loss_type == "l2":
        return diff**2
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unsupported loss type {loss_type!r} (expected one of {LOSS_TYPES})")
    c = huber_c.to(diff.device, torch.float32).reshape(-1, *([1] * (diff.ndim - 1)))
    smooth = torch.sqrt(diff**2 + c**2) - c
    return 2 * c * smooth if loss_type == "huber" else 2 * smooth


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (B, 1, H, W) mask to the loss's (h, w) by area averaging (kohya's apply_masked_loss does the same):
    a latent pixel's weight is the mean of the image pixels it covers."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask.float(), size=tuple(size), mode="area")


def per_sample_loss(elementwise: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) mean over each sample's elements; with a mask, the mask-weighted mean (module docstring)."""
    dims = tuple(range(1, elementwise.ndim))
    if mask is None:
        return elementwise.mean(dim=dims)
    m = resize_mask(mask, tuple(elementwise.shape[-2:])).to(elementwise.device, torch.float32)
    # An all-black mask (nothing to learn) gives 0, not 0/0.
    return (elementwise * m).mean(dim=dims) / m.mean(dim=dims).clamp_min(1e-8)


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
    loss_type: str = "l2",
    huber_schedule: str = "snr",
    huber_c: float = 0.1,
    huber_scale: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Loss per sample (l2 / huber / smooth_l1, optionally masked), min-SNR weighted, prior-preservation
    samples weighted, batch mean. The defaults are plain mean-squared error."""
    c = None if loss_type == "l2" else huber_threshold(timesteps, alphas_cumprod, huber_schedule, huber_c, huber_scale)
    per_sample = per_sample_loss(elementwise_loss(model_pred, target, loss_type, c), mask)
    weights = torch.ones_like(per_sample)
    if min_snr_gamma > 0:
        weights = weights * min_snr_weights(timesteps, alphas_cumprod, min_snr_gamma, prediction_type).to(weights.device)
    if is_reg is not None:
        reg = is_reg.to(weights.device, torch.bool)
        weights = torch.where(reg, weights * prior_loss_weight, weights)
    return (per_sample * weights).mean()
