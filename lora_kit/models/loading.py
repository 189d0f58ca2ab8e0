"""Loading a base model: builtin preset, diffusers folder, single-file checkpoint, or Hub id.

Everything goes through diffusers' own loaders (`from_pretrained`, `from_single_file`); this module
adds what they lack for a trainer: one `ModelBundle` with the family detected (sd1 / sd2 / sd2v / sdxl,
see lora_kit.models.family), `builtin:` presets materialised on first use, one clear line when a model is
neither local nor reachable ("fetch X with `hf download X` on a machine with network, then pass the
folder"), and `load_for_training`: the one way `lora-kit train` and `lora-kit cache` get a model ready
(VAE override, zero-terminal-SNR schedule, VAE dtype rule), so a latent cache built by one is reused by the other.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from lora_kit.adapters.io import _sniff
from lora_kit.config.schema import ModelConfig
from lora_kit.errors import UserError
from lora_kit.models.family import SDXL, detect_family, family as family_info
from lora_kit.models.presets import PRESETS, write_preset
from lora_kit.paths import builtin_name, cache_dir, is_builtin, shipped_model_dir
from lora_kit.precision import training_dtype

DEFAULT_MODEL = "builtin:tiny-sd15"
logger = logging.getLogger(__name__)
UNSHIPPED_FALLBACK = {"tiny-world": "tiny-sd15"}


@dataclass
class ModelBundle:
    """The pieces training and inference need, with where they came from."""

    family: str
    unet: Any
    vae: Any
    noise_scheduler: Any
    text_encoders: list = field(default_factory=list)
    tokenizers: list = field(default_factory=list)
    source: str = ""  # what the user passed (never an absolute path in published metadata)
    path: str = ""  # resolved local path

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def is_sdxl(self) -> bool:
        return self.family == SDXL

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def resolve_model(spec: str) -> str:
    """Turn a model spec into something `from_pretrained` reads (a local folder, file or hub id)."""
    if is_builtin(spec):
        name = builtin_name(spec)
        shipped = shipped_model_dir(name)  # the trained tiny world, when shipped
        if shipped is not None:
            return str(shipped)
        if name in UNSHIPPED_FALLBACK:
            # An install without the trained tiny world still runs every code path on a random-init twin.
            logger.warning("%s is not shipped in this install; using the random-init %s", spec, UNSHIPPED_FALLBACK[name])
            name = UNSHIPPED_FALLBACK[name]
        if name not in PRESETS:
            raise UserError(f"unknown builtin model {spec!r}; expected builtin:<{'|'.join(PRESETS)}>")
        target = cache_dir() / "models" / name
        if not (target / "model_index.json").exists():
            write_preset(name, target, seed=0)
        return str(target)
    return spec


def _offline_message(spec: str, exc: Exception) -> UserError:
    return UserError(
        f"model {spec!r} is not a local folder or file and could not be fetched from the Hugging Face Hub "
        f"({type(exc).__name__}). On a machine with network run `hf download {spec}` (or download the "
        f"single .safetensors checkpoint) and pass the local path; or set HF_HOME to a cache that has it."
    )


def _single_file_pipeline(path: Path, config: str | None, dtype):
    is_xl = config is not None and "xl" in str(config).lower()
    cls = diffusers.StableDiffusionXLPipeline if is_xl else diffusers.StableDiffusionPipeline
    kwargs: dict = {"torch_dtype": dtype}
    if config:
        kwargs["config"] = config  # a local diffusers folder or hub id describing the architecture
    try:
        return cls.from_single_file(str(path), **kwargs)
    except OSError as exc:
        raise UserError(
            f"could not build {path.name} with from_single_file ({exc}); pass a local diffusers folder of the "
            "same architecture (e.g. a downloaded stable-diffusion-v1-5) as [model] single_file_config (--single-file-config)"
        ) from exc


def load_model(spec: str = DEFAULT_MODEL, *, dtype=None, single_file_config: str | None = None, revision: str | None = None, variant: str | None = None) -> ModelBundle:
    """Load U-Net, VAE, text encoder(s), tokenizer(s) and the training noise scheduler."""
    dtype = dtype or torch.float32
    local = resolve_model(spec)
    path = Path(local).expanduser()
    if path.is_file():
        kind = _sniff(path)
        if path.suffix in (".ckpt", ".pt", ".bin", ".pth") or kind == "pickle":
            raise UserError(f"{path.name}: pickle checkpoints are not loaded; convert it to .safetensors first")
        if kind != "safetensors":  # from_single_file's own error would send the user after a config folder
            raise UserError(f"{path.name}: not a model checkpoint ({kind}); expected a .safetensors checkpoint or a diffusers folder")
        pipe = _single_file_pipeline(path, single_file_config, dtype)
        return _bundle_from_pipeline(pipe, spec, str(path))
    if not path.exists() and (os.path.isabs(local) or local.startswith((".", "~"))):
        raise UserError(f"model path {local} does not exist")
    try:
        info = diffusers.DiffusionPipeline.load_config(local, revision=revision)
    except Exception as exc:  # EnvironmentError, LocalEntryNotFoundError, OfflineModeIsEnabled...
        raise _offline_message(spec, exc) from exc
    kw = {"revision": revision, "variant": variant}
    unet = UNet2DConditionModel.from_pretrained(local, subfolder="unet", torch_dtype=dtype, **kw)
    vae = AutoencoderKL.from_pretrained(local, subfolder="vae", torch_dtype=dtype, **kw)
    noise_scheduler = DDPMScheduler.from_pretrained(local, subfolder="scheduler", revision=revision)
    text_encoders, tokenizers = _load_text_stack(local, info, dtype, kw)
    family = detect_family(dict(unet.config), dict(noise_scheduler.config))
    return ModelBundle(family, unet, vae, noise_scheduler, text_encoders, tokenizers, source=spec, path=str(path) if path.exists() else spec)


def _load_text_stack(local: str, info: dict, dtype, kw: dict) -> tuple[list, list]:
    encoders, tokenizers = [], []
    for te_name, tok_name in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        if te_name not in info or info[te_name][0] is None:
            continue
        te_cls = getattr(transformers, info[te_name][1])
        tok_cls = getattr(transformers, info[tok_name][1])
        encoders.append(te_cls.from_pretrained(local, subfolder=te_name, torch_dtype=dtype, **kw))
        tokenizers.append(tok_cls.from_pretrained(local, subfolder=tok_name, revision=kw.get("revision")))
    return encoders, tokenizers


def _bundle_from_pipeline(pipe, spec: str, path: str) -> ModelBundle:
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    tes = [t for t in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if t is not None]
    toks = [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]
    family = detect_family(dict(pipe.unet.config), dict(sched.config))
    return ModelBundle(family, pipe.unet, pipe.vae, sched, tes, toks, source=spec, path=path)


def model_index(spec: str) -> dict:
    """model_index.json of a resolved local folder ({} if not a folder)."""
    p = Path(resolve_model(spec)) / "model_index.json"
    return json.loads(p.read_text()) if p.exists() else {}


def vae_dtype(family: str, weight_dtype: torch.dtype, custom_vae: bool) -> torch.dtype:
    """The VAE's dtype in training and latent caching (part of the latent-cache key): the weights' dtype,
    except fp32 for a family whose stock VAE overflows in fp16 (SDXL; kept for bf16 too, as the trainer always
    did) when no replacement VAE is given."""
    return torch.float32 if family_info(family).fp32_vae and not custom_vae else weight_dtype


def _load_vae(spec: str) -> AutoencoderKL:
    """`model.vae`: a diffusers VAE folder (config.json and weights) or a Hub id of one."""
    try:
        return AutoencoderKL.from_pretrained(spec)
    except (OSError, ValueError) as exc:  # no config.json, not a folder, offline, unreadable weights
        raise UserError(f"[model] vae: {spec!r} is not a diffusers VAE folder (config.json and weights) nor a Hub id "
                        f"in the local cache ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc


def load_for_training(model: ModelConfig, precision: str, device) -> ModelBundle:
    """The bundle `lora-kit train` and `lora-kit cache` start from: `model.vae` replaces the VAE,
    `model.zero_terminal_snr` rescales the training schedule, and the frozen VAE sits on `device` in
    `vae_dtype` (U-Net and text encoders stay fp32 on the CPU: the trainer places and casts them).
    `precision` is accelerate's mixed_precision name ("no", "fp16", "bf16")."""
    b = load_model(model.pretrained, revision=model.revision or None, variant=model.variant or None,
                   single_file_config=model.single_file_config or None)
    if model.vae:
        b.vae = _load_vae(model.vae)
    if model.zero_terminal_snr:
        b.noise_scheduler = DDPMScheduler.from_config(b.noise_scheduler.config, rescale_betas_zero_snr=True)
    b.vae.requires_grad_(False).eval().to(device=device, dtype=vae_dtype(b.family, training_dtype(precision), bool(model.vae)))
    return b
