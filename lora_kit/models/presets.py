"""Tiny random-init Stable Diffusion models, built from config, for tests and smoke runs.

Each preset is the real diffusers architecture of its family (cross-attention U-Net, AutoencoderKL,
CLIP text encoder(s) with a real BPE tokenizer, DDPM scheduler) at a size that trains in seconds on a
CPU. `write_preset` saves a diffusers-format folder that every loader in lora-kit (and diffusers'
`from_pretrained`) reads like a real model, so the same code paths are exercised.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import diffusers
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from lora_kit.errors import UserError
from lora_kit.models.family import SD1, SD2V, SDXL
from lora_kit.models.tokenizer import write_clip_tokenizer
from lora_kit.utils import save_pretrained_atomic


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    resolution: int  # pixel size the preset is meant for
    build: Callable[[int], dict]
    description: str


def _scheduler(prediction_type: str = "epsilon"):
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type=prediction_type,
        steps_offset=1,
    )


def _vae():
    # Three blocks: 4x spatial downsampling (64 px -> 16x16x4 latents), about 0.3 M parameters.
    return AutoencoderKL(
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=64,
    )


def _clip_text(hidden: int = 32, projection: bool = False, hidden_act: str = "quick_gelu"):
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=hidden,
        hidden_act=hidden_act,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(cfg)


def _tokenizer(tmp: Path, pad_token: str = "<|endoftext|>"):
    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp, pad_token=pad_token))


def _seeded(seed: int):
    torch.manual_seed(seed)


# What every tiny U-Net shares: 16x16 latents (64 px through the 4x VAE), two levels, one layer each.
_TINY_UNET = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32)
_TINY_SIZE = _TINY_UNET["sample_size"] * 4  # pixels: the VAE downsamples 4x (three blocks)


def _build_sd(seed: int, v_pred: bool, linear_proj: bool, head_dim) -> dict:
    _seeded(seed)
    unet = UNet2DConditionModel(
        **_TINY_UNET,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=head_dim,
        use_linear_projection=linear_proj,
    )
    vae = _vae()
    text_encoder = _clip_text(32, hidden_act="gelu" if v_pred else "quick_gelu")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp), pad_token="!" if v_pred else "<|endoftext|>")
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": _scheduler("v_prediction" if v_pred else "epsilon"),
    }


def _build_sdxl(seed: int) -> dict:
    _seeded(seed)
    unet = UNet2DConditionModel(
        **_TINY_UNET,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        # 6 micro-conditioning numbers x 8 + the pooled embedding of text_encoder_2 (32)
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,  # penultimate hidden states of both encoders, concatenated (32 + 32)
    )
    vae = _vae()
    text_encoder = _clip_text(32)
    text_encoder_2 = _clip_text(32, projection=True, hidden_act="gelu")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp) / "a")
        tokenizer_2 = _tokenizer(Path(tmp) / "b", pad_token="!")
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "scheduler": _scheduler("epsilon"),
    }


PRESETS: dict[str, Preset] = {
    "tiny-sd15": Preset("tiny-sd15", SD1, _TINY_SIZE, lambda s: _build_sd(s, False, False, 8), "SD1.x architecture, epsilon"),
    "tiny-sd2v": Preset("tiny-sd2v", SD2V, _TINY_SIZE, lambda s: _build_sd(s, True, True, (2, 4)), "SD2.x architecture, v-prediction"),
    "tiny-sdxl": Preset("tiny-sdxl", SDXL, _TINY_SIZE, _build_sdxl, "SDXL architecture: two text encoders, add_time_ids"),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def build_components(name: str, seed: int = 0) -> dict:
    """The diffusers components of a preset, random-init from `seed` (deterministic)."""
    return get_preset(name).build(seed)


def pipeline_class(family: str):
    return diffusers.StableDiffusionXLPipeline if family == SDXL else diffusers.StableDiffusionPipeline


def build_pipeline(name: str, seed: int = 0):
    comps = build_components(name, seed)
    family = get_preset(name).family
    if family == SDXL:
        return pipeline_class(family)(**comps)
    return pipeline_class(family)(**comps, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def write_preset(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Save a preset as a diffusers folder (atomically: a temp folder renamed into place)."""
    return save_pretrained_atomic(build_pipeline(name, seed), out_dir)
