"""The tiny base model of the shapes world: architecture, untrained construction, ControlNet conditioning.

The shipped weights (lora_kit/world/weights/tiny-world/, a diffusers StableDiffusionPipeline folder) are
these components trained by scripts/pretrain_tiny_base.py; the ControlNet
(lora_kit/world/weights/tiny-world-controlnet/) by scripts/pretrain_tiny_controlnet.py. The architecture
is Stable Diffusion 1.x at a size a 2-core CPU pretrains in about an hour:

- AutoencoderKL, 4x downsampling: a 64x64 picture is a 16x16x4 latent (an 80x48 one 20x12x4);
- CLIPTextModel, 64 wide and 3 layers deep, with the real 49,408-token CLIP BPE vocabulary, so every
  trigger word tokenizes the way it does for SD 1.5; prompts are cut at 32 tokens (captions are short);
- UNet2DConditionModel with one downsampling (latent sizes are even, not multiples of 4) and
  cross-attention on the 8x8 level and in the mid block, where it is cheap;
- DDPM training schedule of SD (scaled_linear, 1000 steps, epsilon), saved as DPM-Solver++ 2M for sampling.

Everything here is pure construction: no training, no file I/O except the tokenizer's temp folder.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from lora_kit.infer.control import canny
from lora_kit.models.tokenizer import write_clip_tokenizer
from lora_kit.world.score import segment, to_rgb_array
from lora_kit.world.shapes import Scene, render

TOKEN_MAX_LENGTH = 32  # the longest caption of the world and its datasets, "a yellow zyk triangle on a light blue background", is 11

VAE_CONFIG = dict(
    block_out_channels=(16, 32, 64),
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    latent_channels=4,
    norm_num_groups=8,
    layers_per_block=1,
    sample_size=64,
)

TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=64,
    hidden_act="quick_gelu",
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128),
    layers_per_block=2,
    # Self- and cross-attention only at 8x8 (and in the mid block): at 16x16 it doubled the cost of a
    # training step on CPU for no visible gain in this world.
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=32,
)

# Two stride-2 convolutions take the 64 px control image to the 16x16 latent grid (the 4x VAE); the SD
# default (16, 32, 96, 256) has three and would expect an 8x VAE.
CONTROLNET_EMBEDDING_CHANNELS = (16, 32, 64)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
)


def build_vae(seed: int = 0):
    torch.manual_seed(seed)
    return AutoencoderKL(**VAE_CONFIG)


def build_text_encoder(seed: int = 0):
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def build_unet(seed: int = 0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG)


def build_tokenizer():
    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tmp), model_max_length=TOKEN_MAX_LENGTH))


def training_scheduler():
    return DDPMScheduler(clip_sample=False, **SCHEDULER_CONFIG)


def sampling_scheduler():
    """DPM-Solver++ 2M over the training schedule: the scheduler saved in the pipeline folder."""
    return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **SCHEDULER_CONFIG)


def build_components(seed: int = 0) -> dict:
    """The untrained pipeline components (each part seeded from `seed` on its own, so the VAE does not
    change when the U-Net config does)."""
    return {
        "vae": build_vae(seed),
        "text_encoder": build_text_encoder(seed + 1),
        "tokenizer": build_tokenizer(),
        "unet": build_unet(seed + 2),
        "scheduler": sampling_scheduler(),
    }


def make_pipeline(components: dict):
    return StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def controlnet_from_unet(unet):
    """A ControlNet initialised from the base U-Net's encoder (the standard recipe), for 3-channel edges."""
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROLNET_EMBEDDING_CHANNELS)


# --- ControlNet conditioning -------------------------------------------------------------------------


def silhouette(scene: Scene) -> Image.Image:
    """The scene's shape in white on black, at the scene's canvas size (same anti-aliasing as render)."""
    return render(replace(scene, color="white", background="black", fill="solid")).convert("L")


def mask_edges(mask) -> Image.Image:
    """Canny outline (white on black RGB) of a foreground mask (bool array or L image)."""
    arr = np.asarray(mask)
    arr = (arr > 0).astype(np.uint8) * 255 if arr.dtype == bool else arr.astype(np.uint8)
    return canny(Image.fromarray(arr, "L"))


def scene_edges(scene: Scene) -> Image.Image:
    """The ControlNet conditioning of a scene: the Canny outline of its shape.

    Edges come from the silhouette, not from the coloured picture, because some colour/background pairs
    of the world differ in hue only (orange on grey: 20 grey levels apart) and a Canny on luminance
    would miss their outline. On every high-contrast picture the two maps are the same lines.
    """
    return mask_edges(silhouette(scene))


def image_edges(image) -> Image.Image:
    """The same kind of edge map for any picture of the world (e.g. a generated one): the Canny outline of
    the foreground lora_kit.world.score segments, whatever the colours."""
    mask, _ = segment(to_rgb_array(image))
    return mask_edges(mask)
