"""A diffusers pipeline as one LDM ("original") .safetensors checkpoint: what A1111, ComfyUI and diffusers'
`from_single_file` load.

diffusers ships only the other direction in its package (loaders/single_file_utils.py); the forward
conversion is a repository script (scripts/convert_diffusers_to_original_stable_diffusion.py) that is not
importable and hard-codes the real models' block counts. So the key map is written here, derived from the
models' configs like the SDXL LoRA names are:
- U-Net: `model.diffusion_model.` + Stability block names from `names.block_table(U-Net config)` (tested
  against diffusers' own reverse mapping), ResNet layers renamed inside blocks (conv1 -> in_layers.2 ...);
  the transformer blocks keep their names (LDM's SpatialTransformer uses diffusers' inner names).
- VAE: `first_stage_model.` + LDM's encoder/decoder names (down.i.block.j, up.(n-1-i) - the decoder counts
  from the bottom -, mid.block_1/2, mid.attn_1 with q/k/v/proj_out as 1x1 convs, nin_shortcut, norm_out).
- Text encoders: CLIP-L as `cond_stage_model.transformer.` (SD1) / `conditioner.embedders.0.transformer.`
  (SDXL) + the transformers keys; OpenCLIP encoders (SD2's, SDXL's second) re-packed into OpenCLIP's layout
  (`transformer.resblocks.i.attn.in_proj_weight` = q, k, v stacked, ln_1/ln_2, mlp.c_fc/c_proj,
  positional_embedding, ln_final, text_projection transposed) under `cond_stage_model.model.` /
  `conditioner.embedders.1.model.`.
"""

from __future__ import annotations

import re

import torch
from safetensors.torch import save_file

from lora_kit.adapters import names
from lora_kit.errors import UserError
from lora_kit.models.family import SD1, SD2, SD2V, SDXL
from lora_kit.utils import atomic_write

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# family -> [(prefix, layout)] per text encoder, in pipeline order
TEXT_PREFIXES = {
    SD1: [("cond_stage_model.transformer.", "clip")],
    SD2: [("cond_stage_model.model.", "openclip")],
    SD2V: [("cond_stage_model.model.", "openclip")],
    SDXL: [("conditioner.embedders.0.transformer.", "clip"), ("conditioner.embedders.1.model.", "openclip")],
}
_VAE_ATTN = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
_OPENCLIP = {"layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.", "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj.",
             "self_attn.out_proj.": "attn.out_proj."}


def unet_to_ldm(sd: dict, unet_config: dict) -> dict:
    layout = names.layout_from_config(unet_config)
    out = {}
    for key, tensor in sd.items():
        path, _, param = key.rpartition(".")
        out[f"{UNET_PREFIX}{names.diffusers_to_sgm(path, layout)}.{param}"] = tensor
    return out


def _vae_key(key: str, levels: int) -> str:
    side, _, rest = key.partition(".")
    if side not in ("encoder", "decoder"):
        return key  # quant_conv, post_quant_conv
    up = lambda m: f"up.{levels - 1 - int(m[1])}."  # noqa: E731 - LDM's decoder counts from the bottom
    rules = [
        (r"^down_blocks\.(\d+)\.resnets\.(\d+)\.", r"down.\1.block.\2."),
        (r"^down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample."),
        (r"^up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: up(m) + f"block.{m[2]}."),
        (r"^up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: up(m) + "upsample."),
        (r"^mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
        (r"^mid_block\.attentions\.0\.", "mid.attn_1."),
        (r"^conv_norm_out\.", "norm_out."),
    ]
    for pattern, repl in rules:
        rest = re.sub(pattern, repl, rest)
    rest = rest.replace(".conv_shortcut.", ".nin_shortcut.")
    if rest.startswith("mid.attn_1."):
        inner = rest[len("mid.attn_1."):]
        for a, b in _VAE_ATTN.items():
            if inner.startswith(a):
                inner = b + inner[len(a):]
                break
        rest = "mid.attn_1." + inner
    return f"{side}.{rest}"


def vae_to_ldm(sd: dict, vae_config: dict) -> dict:
    levels = len(vae_config["up_block_types"])
    out = {}
    for key, tensor in sd.items():
        new = _vae_key(key, levels)
        if ".mid.attn_1." in new and new.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's AttnBlock uses 1x1 convolutions
        out[VAE_PREFIX + new] = tensor
    return out


def _hf_keys(sd: dict) -> dict:
    # transformers 5 flattens CLIPTextModel (no `text_model.`); LDM files always have it.
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v for k, v in sd.items()}


def clip_to_ldm(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in _hf_keys(sd).items()}


def openclip_to_ldm(sd: dict, prefix: str) -> dict:
    sd = {k: v for k, v in _hf_keys(sd).items() if not k.endswith("position_ids")}
    fixed = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    out = {prefix + v: sd.pop(k) for k, v in fixed.items() if k in sd}
    if "text_projection.weight" in sd:
        out[prefix + "text_projection"] = sd.pop("text_projection.weight").T.contiguous()
    layers = sorted({int(m[1]) for k in sd if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))})
    for i in layers:
        src, dst = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{param}"] = torch.cat([sd.pop(f"{src}self_attn.{p}_proj.{param}") for p in "qkv"])
        for key in [k for k in sd if k.startswith(src)]:
            rest = key[len(src):]
            a = next((a for a in _OPENCLIP if rest.startswith(a)), None)
            if a is None:
                raise UserError(f"text encoder weight {key} has no OpenCLIP name")
            out[dst + _OPENCLIP[a] + rest[len(a):]] = sd.pop(key)
    if sd:
        raise UserError(f"text encoder weights without an OpenCLIP name: {', '.join(sorted(sd)[:5])}")
    return out


def pipeline_to_ldm(pipe, family: str) -> dict:
    """Every weight of an SD1/SD2/SDXL pipeline under its LDM checkpoint key (contiguous tensors)."""
    out = unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config))
    out.update(vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config)))
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == SDXL else [])
    for (prefix, kind), te in zip(TEXT_PREFIXES[family], encoders):
        convert = clip_to_ldm if kind == "clip" else openclip_to_ldm
        out.update(convert(te.state_dict(), prefix))
    return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}


def save_single_file(pipe, family: str, path, metadata: dict | None = None):
    """Write `pipeline_to_ldm` atomically (temp file + rename)."""
    tensors = pipeline_to_ldm(pipe, family)
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata or None))
