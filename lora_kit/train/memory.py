"""`train.gradient_checkpointing = "auto"`: off when the batch's activations fit the device, on otherwise.

Checkpointing recomputes each block's forward during the backward pass: about a third more compute per
step, for activation memory that no longer grows with depth. It only pays when the batch would not fit.
What a batch needs is measured, not guessed from a formula: one forward + backward of the U-Net at batch
1 on the largest bucket, without checkpointing, under the run's autocast, gives the activation bytes per
image (the peak minus what was allocated before); the batch fits when that times the batch size stays
under `FIT_FRACTION` of the free device memory (the optimizer state and allocator slack take the rest).
The probe draws its random inputs inside `torch.random.fork_rng`, leaves no gradients behind and runs
before the optimizer exists, so training (and resume) is unchanged. On the CPU the answer is off: memory
is the system's, and the step is compute-bound, so checkpointing would only slow it down.
"""

from __future__ import annotations

import torch

FIT_FRACTION = 0.8


def fits(per_image_bytes: float, batch: int, free_bytes: float, fraction: float = FIT_FRACTION) -> bool:
    return per_image_bytes * batch <= fraction * free_bytes


def _probe_inputs(unet, latent_hw: tuple[int, int], device, dtype) -> tuple[tuple, dict]:
    cfg = unet.config
    h, w = latent_hw
    x = torch.randn(1, cfg.in_channels, h, w, device=device, dtype=dtype)
    t = torch.tensor([500], device=device)
    ctx_dim = cfg.cross_attention_dim if isinstance(cfg.cross_attention_dim, int) else cfg.cross_attention_dim[0]
    kw = {"encoder_hidden_states": torch.randn(1, 77, ctx_dim, device=device, dtype=dtype)}
    if cfg.addition_embed_type == "text_time":  # SDXL: pooled text embedding + 6 micro-conditioning ids
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled, device=device, dtype=dtype),
                                   "time_ids": torch.tensor([[h * 8, w * 8, 0, 0, h * 8, w * 8]], device=device, dtype=dtype)}
    return (x, t), kw


def activation_bytes_per_image(unet, latent_hw: tuple[int, int], device, dtype, autocast) -> int:
    """Peak bytes a batch-1 forward + backward adds on a CUDA device (see the module doc)."""
    with torch.random.fork_rng(devices=[device]):
        args, kw = _probe_inputs(unet, latent_hw, device, dtype)
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with autocast():
            out = unet(*args, **kw).sample
        out.float().square().mean().backward()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
    for p in unet.parameters():
        p.grad = None
    del out
    torch.cuda.empty_cache()
    return int(peak)


def decide_checkpointing(setting, unet, latent_hw: tuple[int, int], batch: int, device, dtype, autocast) -> tuple[bool, str]:
    """(on, why) for the run summary; `setting` is the recipe's true / false / "auto"."""
    if setting is not True and setting is not False and setting != "auto":
        raise ValueError(f"gradient_checkpointing: {setting!r}")
    if setting != "auto":
        return bool(setting), "set in the recipe"
    if device.type != "cuda":
        return False, "auto: off on the CPU (system memory; recomputing would only slow the step)"
    try:
        per_image = activation_bytes_per_image(unet, latent_hw, device, dtype, autocast)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return True, "auto: on (one image's activations did not fit)"
    free, _total = torch.cuda.mem_get_info(device)
    on = not fits(per_image, batch, free)
    need = per_image * batch / 2**30
    return on, f"auto: {'on' if on else 'off'} (~{need:.1f} GiB of activations for batch {batch}, {free / 2**30:.1f} GiB free)"
