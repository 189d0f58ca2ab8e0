"""Random but valid LoRA files and ControlNets for a given model: tests, benchmarks, smoke runs.

A freshly initialised LoRA (B = 0) and a ControlNet from `ControlNetModel.from_unet` (zero convs) change
nothing, so neither can show that loading, stacking, fusing or conditioning works. These helpers write
seeded non-zero ones, in the two on-disk formats lora-kit reads:
- "peft": `unet.<module>.lora_A.weight` / `lora_B.weight` (what diffusers' save_lora_weights writes);
- "kohya": `lora_unet_<module_with_underscores>.lora_down.weight` / `lora_up.weight` / `.alpha`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from diffusers import ControlNetModel
from safetensors.torch import save_file

from lora_kit.utils import atomic_write

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _linears(module, targets) -> list:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(tuple(f".{t}" for t in targets))]


def random_lora_state_dict(unet, text_encoder=None, *, rank: int = 4, alpha: float | None = None, seed: int = 0, std: float = 0.3, fmt: str = "peft") -> dict:
    """A LoRA on every attention projection: A ~ N(0, 1/in), B ~ N(0, std^2); delta = alpha/rank * B @ A."""
    if fmt not in ("peft", "kohya"):
        raise ValueError(f"fmt must be peft or kohya, not {fmt!r}")
    gen = torch.Generator().manual_seed(seed)
    alpha = float(rank if alpha is None else alpha)
    parts = [("unet", "lora_unet_", unet, UNET_TARGETS)]
    if text_encoder is not None:
        parts.append(("text_encoder", "lora_te_", text_encoder, TEXT_TARGETS))
    sd: dict = {}
    for prefix, kohya_prefix, module, targets in parts:
        for name, lin in _linears(module, targets):
            a = torch.randn(rank, lin.in_features, generator=gen) / math.sqrt(lin.in_features)
            b = torch.randn(lin.out_features, rank, generator=gen) * std
            if fmt == "peft":
                if alpha != rank:
                    b = b * (alpha / rank)  # peft files carry no alpha: bake the scale into B
                sd[f"{prefix}.{name}.lora_A.weight"] = a
                sd[f"{prefix}.{name}.lora_B.weight"] = b
            else:
                key = kohya_prefix + name.replace(".", "_")
                sd[f"{key}.lora_down.weight"] = a
                sd[f"{key}.lora_up.weight"] = b
                sd[f"{key}.alpha"] = torch.tensor(alpha)
    return sd


def write_random_lora(path: str | Path, unet, text_encoder=None, **kwargs) -> Path:
    """Save `random_lora_state_dict(...)` as .safetensors (atomically)."""
    sd = {k: v.contiguous() for k, v in random_lora_state_dict(unet, text_encoder, **kwargs).items()}
    return atomic_write(path, lambda tmp: save_file(sd, str(tmp), metadata={"format": "pt"}))


def random_controlnet(unet, vae_scale_factor: int, seed: int = 0, std: float = 0.1):
    """ControlNetModel.from_unet with seeded non-zero output convs; its conditioning embedding
    downsamples by `vae_scale_factor` so control images at pixel size match the latents."""
    downs = int(math.log2(vae_scale_factor))
    channels = (16, 32, 96, 256)[: downs + 1] if downs <= 3 else (16,) + (32,) * downs
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return net
