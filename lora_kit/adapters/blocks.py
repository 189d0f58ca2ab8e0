"""kohya's U-Net block indices: per-block ranks/alphas (block_dims...) and learning-rate weights.

kohya-ss/sd-scripts networks/lora.py numbers the U-Net blocks by Stability's (LDM/SGM) layout:
- SD1/SD2, 25 entries (`get_block_index`, `NUM_OF_BLOCKS = 12`): IN00-IN11 (`input_blocks.N`; IN00 is
  conv_in and never holds a LoRA), MID (the whole mid block), OUT00-OUT11 (`output_blocks.N`).
  kohya computes it from diffusers names as `1 + 3*i + j` (down) / `13 + 3*i + j` (up), which is the
  input/output block number when layers_per_block = 2.
- SDXL, 23 entries (`SDXL_NUM_OF_BLOCKS = 9`, `SDXL_NUM_OF_MID_BLOCKS = 3`): BASE (time/label
  embedding), IN00-IN08, MID0-MID2 (`middle_block.0/1/2`), OUT00-OUT08, OUT (the final norm/conv).
  Its lr weights are down (9) + mid (3) + up (9), with 1.0 added for BASE and OUT.
Here the block of a diffusers module path comes from its Stability name (`names.diffusers_to_sgm`, built
from the U-Net config), so a tiny test U-Net with fewer blocks is numbered the way kohya numbers a real one
(e.g. 2 levels x 1 layer: IN00-IN03, MID, OUT00-OUT03). No library maps these indices (peft and diffusers
know neither kohya's block lists nor Stability names for SD1), hence this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lora_kit.adapters.names import diffusers_to_sgm
from lora_kit.errors import UserError


@dataclass(frozen=True)
class BlockLayout:
    n_in: int  # Stability input blocks (= output blocks): levels x (layers_per_block + 1)
    sdxl: bool

    @property
    def count(self) -> int:
        """Length of block_dims / block_alphas (kohya: 25 for SD1, 23 for SDXL)."""
        return 1 + self.n_in + 3 + self.n_in + 1 if self.sdxl else 2 * self.n_in + 1

    @property
    def mid_count(self) -> int:
        return 3 if self.sdxl else 1

    def labels(self) -> list[str]:
        ins = [f"IN{i:02d}" for i in range(self.n_in)]
        outs = [f"OUT{i:02d}" for i in range(self.n_in)]
        if self.sdxl:
            return ["BASE", *ins, "MID0", "MID1", "MID2", *outs, "OUT"]
        return [*ins, "MID", *outs]

    def describe(self) -> str:
        labels = self.labels()
        return f"{self.count} values ({labels[0]}..{labels[-1]})"


def block_layout(layout: dict, sdxl: bool) -> BlockLayout:
    """From `names.layout_from_config(unet.config)`: how many Stability input blocks the U-Net has."""
    return BlockLayout(len(layout["down_block_types"]) * (layout["layers_per_block"] + 1), sdxl)


def block_index(path: str, layout: dict, blocks: BlockLayout) -> int | None:
    """kohya's block index of a diffusers U-Net module path; None where kohya has none (SD1 conv_in/out,
    time embedding: kohya's SD1 code gives -1 there, which its list lookup then reads as the last block;
    lora-kit leaves those modules at the network's rank instead)."""
    try:
        sgm = diffusers_to_sgm(path, layout)
    except UserError:
        return None
    parts = sgm.split(".")
    head, num = parts[0], int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    n = blocks.n_in
    if head == "input_blocks":
        return num + (1 if blocks.sdxl else 0)
    if head == "middle_block":
        return 1 + n + num if blocks.sdxl else n
    if head == "output_blocks":
        return 1 + n + 3 + num if blocks.sdxl else n + 1 + num
    if blocks.sdxl and head in ("time_embed", "label_emb"):
        return 0
    if blocks.sdxl and head == "out":
        return blocks.count - 1
    return None


def _preset(name: str, n: int) -> list[float]:
    """kohya's named lr-weight curves (`get_block_lr_weight`): cosine, sine, linear, reverse_linear, zeros,
    each optionally `+base` (added to every value)."""
    word, _, base = name.partition("+")
    b = float(base) if base else 0.0
    ramp = [i / (n - 1) if n > 1 else 0.0 for i in range(n)]
    curves = {
        "sine": [math.sin(math.pi * x / 2) for x in ramp],
        "cosine": [math.sin(math.pi * x / 2) for x in reversed(ramp)],
        "linear": ramp,
        "reverse_linear": list(reversed(ramp)),
        "zeros": [0.0] * n,
    }
    return [v + b for v in curves[word]]


PRESETS = ("cosine", "sine", "linear", "reverse_linear", "zeros")


def is_preset(value) -> bool:
    if not isinstance(value, str):
        return False
    word, _, base = value.partition("+")
    try:
        float(base or 0)
    except ValueError:
        return False
    return word in PRESETS


def block_lr_weights(down, mid, up, blocks: BlockLayout) -> list[float] | None:
    """One weight per block (same indexing as block_dims), or None when no lr weight is set.
    `down`/`up`: a list (one per IN/OUT block) or a kohya preset name; `mid`: a list; empty = all 1."""
    if not down and not mid and not up:
        return None
    n = blocks.n_in

    def side(value, key: str, count: int) -> list[float]:
        if isinstance(value, str):
            return _preset(value, count)
        if not value:
            return [1.0] * count
        if len(value) != count:
            raise UserError(f"[optimizer] {key}: expected {count} values for this U-Net, got {len(value)}")
        return [float(v) for v in value]

    weights = side(down, "down_lr_weight", n) + side(mid, "mid_lr_weight", blocks.mid_count) + side(up, "up_lr_weight", n)
    return [1.0, *weights, 1.0] if blocks.sdxl else weights  # kohya: BASE and OUT keep weight 1 on SDXL


def per_block(values: list, key: str, blocks: BlockLayout) -> list | None:
    """A block_dims-style list checked against this U-Net (None when not set)."""
    if not values:
        return None
    if len(values) != blocks.count:
        raise UserError(f"[network] {key}: expected {blocks.describe()} for this "
                        f"{'SDXL' if blocks.sdxl else 'SD1/SD2'} U-Net, got {len(values)}")
    return list(values)


def kohya_network_args(net, opt) -> dict:
    """The block and LoRA+ settings as kohya writes them in ss_network_args: lists as comma-separated
    strings ("4,4,8,..."), presets by name, ratios as numbers; only what the recipe sets."""
    def joined(values) -> str:
        return values if isinstance(values, str) else ",".join(f"{v:g}" for v in values)

    out = {}
    for key in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas"):
        if getattr(net, key):
            out[key] = joined(getattr(net, key))
    for key in ("down_lr_weight", "mid_lr_weight", "up_lr_weight"):
        if getattr(opt, key):
            out[key] = joined(getattr(opt, key))
    for key in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"):
        if getattr(opt, key):
            out[key] = getattr(opt, key)
    return out
