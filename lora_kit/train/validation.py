"""Held-out validation loss at fixed timesteps and fixed noise, comparable across steps and runs.

The held-out images (`[dataset] validation_split`) use deterministic captions and a fixed noise seed
(`[validation] seed`), and each is evaluated at every timestep of `[validation] timesteps`, so the curve
moves only when the adapter does. The unwrapped U-Net is used (no DDP collectives) in eval mode (no LoRA
dropout), and all randomness comes from explicit generators: training RNG is untouched.
"""

from __future__ import annotations

import torch

from lora_kit.config.schema import ValidationConfig
from lora_kit.train.step import StepContext, forward_loss


def validation_loss(ctx: StepContext, batches: list[dict], cfg: ValidationConfig, log, step: int) -> float | None:
    """Mean held-out loss over `cfg.timesteps` (each image at each), logged through `log(dict, step=)`;
    None without held-out images. `ctx` holds the unwrapped modules."""
    if not batches:
        return None
    unet = ctx.unet
    was_training = unet.training
    unet.eval()
    per_t: dict[int, float] = {}
    noise_step = -(cfg.seed + 1)  # a "step" no training step uses: its own noise stream
    with torch.no_grad():
        for t in cfg.timesteps:
            total, n = 0.0, 0
            for batch in batches:
                loss, info = forward_loss(ctx, batch, noise_step, fixed_timesteps=torch.tensor([t]))
                total += float(loss) * info["batch_size"]
                n += info["batch_size"]
            per_t[t] = total / n
    if was_training:
        unet.train()
    mean = sum(per_t.values()) / len(per_t)
    log({"val/loss": mean, **{f"val/loss_t{t:04d}": v for t, v in per_t.items()}}, step=step)
    return mean
