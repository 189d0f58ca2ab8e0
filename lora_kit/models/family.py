"""Model families (sd1 / sd2 / sd2v / sdxl): every fact lora-kit keeps per family, in one table.

A family decides, for one base model:
- how its LoRA keys are named in kohya files (SDXL: the U-Net under Stability's `sgm` block names and
  `lora_te1_`/`lora_te2_`; SD1/SD2: diffusers paths and `lora_te_`), see lora_kit.adapters.formats;
- what A1111/ComfyUI/Civitai read back: kohya's `ss_base_model_version` and SAI ModelSpec's
  `modelspec.architecture` (names from kohya-ss/sd-scripts `library/sai_model_spec.py`);
- the native pixel size of the real base model (the ModelSpec resolution when a run does not say);
- whether its stock VAE must stay fp32 in training: SDXL's overflows in fp16 (NaN latents) unless the user
  gave a replacement VAE (e.g. madebyollin's fp16-fix); lora_kit.models.loading.vae_dtype applies it.
No torch here: the table is read by the file-format code too, which never needs a tensor library.

`detect_family` reads a diffusers U-Net config (and the scheduler's prediction type), so it works on a
real checkpoint, a tiny preset and an adapter whose base model is only known by its U-Net config.
"""

from __future__ import annotations

from dataclasses import dataclass

from lora_kit.errors import UserError

SD1, SD2, SD2V, SDXL = "sd1", "sd2", "sd2v", "sdxl"
FAMILIES = (SD1, SD2, SD2V, SDXL)


@dataclass(frozen=True)
class Family:
    name: str
    native_size: int  # pixel side the real base model was trained at
    base_model_version: str  # kohya's ss_base_model_version
    architecture: str  # SAI ModelSpec modelspec.architecture, before the "/lora" suffix
    text_encoders: int
    sgm_unet_names: bool  # kohya names the U-Net after Stability's sgm code (A1111 loads SDXL LoRAs by those)
    fp32_vae: bool  # the stock VAE overflows in fp16 (NaN latents): kept fp32 under any mixed precision
    label: str  # what a model card calls it
    civitai: str  # Civitai's `baseModel` for the family's usual base (SD 2.0 bases: publish.settings)
    implementation: str = ""  # ModelSpec implementation when it is not diffusers'

    @property
    def is_sd2(self) -> bool:  # kohya's ss_v2
        return self.name in (SD2, SD2V)


_STABILITY = "https://github.com/Stability-AI/generative-models"
_TABLE = {
    SD1: Family(SD1, 512, "sd_v1", "stable-diffusion-v1", 1, False, False, "Stable Diffusion 1.x", "SD 1.5"),
    SD2: Family(SD2, 512, "sd_v2", "stable-diffusion-v2-512", 1, False, False, "Stable Diffusion 2.x (512, epsilon)", "SD 2.1"),
    SD2V: Family(SD2V, 768, "sd_v2_v", "stable-diffusion-v2-768-v", 1, False, False,
                 "Stable Diffusion 2.x (768, v-prediction)", "SD 2.1 768"),
    SDXL: Family(SDXL, 1024, "sdxl_base_v1-0", "stable-diffusion-xl-v1-base", 2, True, True, "Stable Diffusion XL",
                 "SDXL 1.0", _STABILITY),
}

# Name -> value views, the shape adapters/metadata.py reads them in.
BASE_MODEL_VERSION = {k: f.base_model_version for k, f in _TABLE.items()}
ARCHITECTURE = {k: f.architecture for k, f in _TABLE.items()}
NATIVE_SIZE = {k: f.native_size for k, f in _TABLE.items()}
IMPLEMENTATION = {k: f.implementation for k, f in _TABLE.items() if f.implementation}


def family(name: str) -> Family:
    if name not in _TABLE:
        raise UserError(f"unknown model family {name!r}; expected one of {', '.join(FAMILIES)}")
    return _TABLE[name]


def detect_family(unet_config: dict, scheduler_config: dict | None = None) -> str:
    """Family from a diffusers U-Net config (+ the scheduler's prediction type when known).

    SDXL: the `text_time` added embedding. SD2: 1024-wide cross-attention or linear projections.
    Any v-prediction model that is not SDXL is `sd2v`, an SD1-architecture one included: the family is
    what tells trainer, metadata and samplers "v-prediction, SD2-768-v", and the tiny SD2-v preset has an
    SD1-sized U-Net (32-wide cross-attention) with SD2's linear projections. Without a scheduler config
    (an adapter exported from a U-Net config only) v-prediction is unknown, so sd2 stays sd2.
    """
    if unet_config.get("addition_embed_type") == "text_time":
        return SDXL
    v = (scheduler_config or {}).get("prediction_type") == "v_prediction"
    sd2 = unet_config.get("cross_attention_dim") == 1024 or bool(unet_config.get("use_linear_projection"))
    if v:
        return SD2V
    return SD2 if sd2 else SD1


def model_native_size(unet_config: dict, vae_scale_factor: int) -> tuple[int, int]:
    """(width, height) in pixels a loaded model generates by default: U-Net sample size x VAE factor."""
    s = unet_config["sample_size"]
    return (s * vae_scale_factor, s * vae_scale_factor) if isinstance(s, int) else (s[1] * vae_scale_factor, s[0] * vae_scale_factor)

