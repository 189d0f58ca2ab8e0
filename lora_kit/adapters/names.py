"""Module-name mapping for LoRA files: kohya's underscored names and Stability's (SGM/LDM) U-Net blocks.

Two problems that no library solves in both directions:

1. kohya writes `lora_unet_<module path with "." replaced by "_">`. Going back is ambiguous because
   module names contain underscores themselves (`to_q`, `proj_in`, `down_blocks`). diffusers'
   `_convert_unet_lora_key` guesses with a chain of string replacements; here a name is split into
   `_`-atoms and re-joined greedily against the vocabulary of module names that actually occur in the
   SD1/SD2/SDXL U-Nets and CLIP text encoders, so an unknown name is an error instead of a wrong path.
2. kohya's SDXL files name the U-Net after Stability's `sgm` code (`input_blocks.4.1`, `middle_block.1`,
   `output_blocks.0.1`), because A1111 loads SDXL LoRAs only by those names. diffusers has only the
   reverse direction (`_maybe_map_sgm_blocks_to_diffusers`, keyed on kohya strings, and it maps the
   upsampler of an up block *without* attention to `attentions`). `block_table` builds one exact,
   invertible table from the U-Net config, so tiny test U-Nets with fewer blocks map like real ones.
"""

from __future__ import annotations

from functools import lru_cache

from lora_kit.errors import UserError

# Real U-Net layouts (the only config fields that decide block names).
SDXL_UNET_LAYOUT = {
    "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
}
SD1_UNET_LAYOUT = {
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
}
LAYOUT_KEYS = tuple(SDXL_UNET_LAYOUT)

# Module-name components that contain "_" (diffusers U-Net, CLIP, sgm U-Net).
_MULTI = {
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
    "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "proj_in", "proj_out", "time_emb_proj",
    "conv_shortcut", "conv_in", "conv_out", "conv_norm_out", "time_embedding", "linear_1", "linear_2",
    "add_embedding", "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
    "text_projection", "final_layer_norm", "layer_norm1", "layer_norm2", "token_embedding",
    "position_embedding", "input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers",
    "emb_layers", "skip_connection", "time_embed", "label_emb",
}
_SINGLE = {
    "attentions", "resnets", "attn1", "attn2", "ff", "net", "proj", "conv1", "conv2", "conv",
    "downsamplers", "upsamplers", "op", "encoder", "layers", "mlp", "fc1", "fc2", "out", "norm",
    "norm1", "norm2", "norm3", "embeddings",
}
_MAX_ATOMS = max(len(w.split("_")) for w in _MULTI)

# Inside a resnet, diffusers and sgm name the layers differently.
_RESNET_TO_SGM = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}
_RESNET_FROM_SGM = {v: k for k, v in _RESNET_TO_SGM.items()}


def underscored_to_path(name: str) -> str:
    """`down_blocks_0_attentions_0_proj_in` -> `down_blocks.0.attentions.0.proj_in` (raises on unknown parts)."""
    atoms = name.split("_")
    parts: list[str] = []
    i = 0
    while i < len(atoms):
        for n in range(min(_MAX_ATOMS, len(atoms) - i), 0, -1):
            word = "_".join(atoms[i : i + n])
            if (n > 1 and word in _MULTI) or (n == 1 and (word in _SINGLE or word in _MULTI or word.isdigit())):
                parts.append(word)
                i += n
                break
        else:
            raise UserError(f"unknown module name part {atoms[i]!r} in {name!r}")
    return ".".join(parts)


def path_to_underscored(path: str) -> str:
    return path.replace(".", "_")


def layout_from_config(unet_config: dict | None) -> dict | None:
    """The block-layout subset of a U-Net config (None stays None = 'use the family default')."""
    if unet_config is None:
        return None
    cfg = dict(unet_config)
    missing = [k for k in LAYOUT_KEYS[:3] if k not in cfg]
    if missing:
        raise UserError(f"U-Net config lacks {', '.join(missing)}; pass the unet/config.json of the base model")
    lpb = cfg["layers_per_block"]
    if not isinstance(lpb, int):
        # diffusers' own sgm mapping makes the same assumption (one layers_per_block for all blocks).
        raise UserError(f"per-block layers_per_block {lpb!r} is not supported for Stability block names")
    return {
        "layers_per_block": lpb,
        "down_block_types": list(cfg["down_block_types"]),
        "up_block_types": list(cfg["up_block_types"]),
        "mid_block_type": cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn"),
    }


def block_table(layout: dict) -> list[tuple[str, str]]:
    """(diffusers prefix, sgm prefix) pairs for every block of a U-Net layout."""
    return list(_block_table(_freeze(layout)))


def _freeze(layout: dict) -> tuple:
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(layout.items()))


@lru_cache(maxsize=16)
def _block_table(frozen: tuple) -> tuple[tuple[str, str], ...]:
    cfg = dict(frozen)
    lpb = cfg["layers_per_block"]
    t = [
        ("conv_in", "input_blocks.0.0"), ("conv_out", "out.2"), ("conv_norm_out", "out.0"),
        ("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
        ("add_embedding.linear_1", "label_emb.0.0"), ("add_embedding.linear_2", "label_emb.0.2"),
    ]
    downs = cfg["down_block_types"]
    for i, kind in enumerate(downs):
        for j in range(lpb):
            n = 1 + i * (lpb + 1) + j
            t.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{n}.0"))
            if "CrossAttn" in kind:
                t.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{n}.1"))
        if i < len(downs) - 1:  # every level but the last ends with a downsampler block
            t.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{1 + i * (lpb + 1) + lpb}.0.op"))
    if cfg.get("mid_block_type"):
        t += [("mid_block.resnets.0", "middle_block.0"), ("mid_block.attentions.0", "middle_block.1"),
              ("mid_block.resnets.1", "middle_block.2")]
    ups = cfg["up_block_types"]
    for i, kind in enumerate(ups):
        attn = "CrossAttn" in kind
        for j in range(lpb + 1):
            n = i * (lpb + 1) + j
            t.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{n}.0"))
            if attn:
                t.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{n}.1"))
        if i < len(ups) - 1:  # the upsampler sits after the resnet (and attention) of the last layer
            t.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{i * (lpb + 1) + lpb}.{2 if attn else 1}.conv"))
    return tuple(t)


def _rename(path: str, table, src: int, inner: dict) -> str | None:
    for pair in table:
        prefix = pair[src]
        if path == prefix or path.startswith(prefix + "."):
            rest = path[len(prefix) + 1 :]
            if rest and ".resnets." in pair[0]:  # resnet layers are the only ones renamed inside a block
                for a, b in inner.items():
                    if rest == a or rest.startswith(a + "."):
                        rest = b + rest[len(a) :]
                        break
            return pair[1 - src] + ("." + rest if rest else "")
    return None


def diffusers_to_sgm(path: str, layout: dict | None = None) -> str:
    """`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q` -> `input_blocks.4.1.transformer_blocks.0.attn1.to_q`."""
    out = _rename(path, block_table(layout or SDXL_UNET_LAYOUT), 0, _RESNET_TO_SGM)
    if out is None:
        raise UserError(f"U-Net module {path!r} has no Stability block name in this U-Net layout")
    return out


def sgm_to_diffusers(path: str, layout: dict | None = None) -> str:
    """Inverse of `diffusers_to_sgm`."""
    out = _rename(path, block_table(layout or SDXL_UNET_LAYOUT), 1, _RESNET_FROM_SGM)
    if out is None:
        raise UserError(f"U-Net module {path!r} does not exist in this U-Net layout (wrong base model config?)")
    return out


def is_sgm_path(path: str) -> bool:
    return path.split(".", 1)[0] in ("input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out")
