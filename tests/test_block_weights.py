"""kohya's block-wise ranks/alphas/lr weights and LoRA+ (lora_kit.adapters.blocks, inject, train.optim).

The block numbering is checked against kohya-ss/sd-scripts networks/lora.py `get_block_index` (SD1 from
diffusers names, SDXL from Stability names) re-implemented from its source for the real U-Net layouts;
training runs on the tiny SD1 and SDXL U-Nets check the groups, the files' per-module ranks/alphas (the
A1111/ComfyUI formula and diffusers' loader) and ss_network_args."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from train_utils import run_training

from lora_kit.adapters import names
from lora_kit.adapters.blocks import block_index, block_layout, block_lr_weights
from lora_kit.config.load import load_recipe
from lora_kit.errors import UserError
from lora_kit.models.loading import resolve_model

RE_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def kohya_sd1_index(lora_name: str) -> int:
    """kohya get_block_index (is_sdxl=False), as in sd-scripts networks/lora.py."""
    m = RE_UPDOWN.search(lora_name)
    if m:
        g = m.groups()
        i, j = int(g[1]), int(g[3])
        idx = 3 * i + 2 if g[2] in ("upsamplers", "downsamplers") else 3 * i + j
        return 1 + idx if g[0] == "down" else 12 + 1 + idx
    return 12 if "mid_block_" in lora_name else -1


def kohya_sdxl_index(lora_name: str) -> int:
    """kohya get_block_index (is_sdxl=True) on Stability names."""
    name = lora_name[len("lora_unet_"):]
    if name.startswith(("time_embed_", "label_emb_")):
        return 0
    for prefix, base in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
        if name.startswith(prefix):
            return base + int(name.split("_")[2])
    return 22 if name.startswith("out_") else -1


def _module_paths(layout):
    """A module path inside every U-Net block (a ResNet conv, an attention projection, a resampler conv)."""
    for diff, _ in names.block_table(layout):
        if diff.startswith(("down_blocks", "up_blocks", "mid_block")):
            yield diff + (".conv1" if ".resnets." in diff else ".proj_in" if ".attentions." in diff else "")


def test_sd1_indices_equal_kohya():
    layout = names.SD1_UNET_LAYOUT
    blocks = block_layout(layout, sdxl=False)
    assert blocks.count == 25 and blocks.labels()[12] == "MID"
    paths = list(_module_paths(layout))
    assert len(paths) == 8 + 3 + 6 + 3 + 12 + 9 + 3  # down resnets, downsamplers, down attentions, mid, up resnets, up attentions, upsamplers
    for path in paths:
        kohya = kohya_sd1_index("lora_unet_" + names.path_to_underscored(path) + "_")
        assert block_index(path, layout, blocks) == kohya, path


def test_sdxl_indices_equal_kohya():
    layout = names.SDXL_UNET_LAYOUT
    blocks = block_layout(layout, sdxl=True)
    assert blocks.count == 23 and blocks.labels()[10:13] == ["MID0", "MID1", "MID2"]
    paths = list(_module_paths(layout)) + ["time_embedding.linear_1", "add_embedding.linear_2", "conv_out"]
    seen = set()
    for path in paths:
        kohya = kohya_sdxl_index("lora_unet_" + names.path_to_underscored(names.diffusers_to_sgm(path, layout)))
        assert block_index(path, layout, blocks) == kohya, path
        seen.add(kohya)
    assert seen == set(range(23)) - {1}  # IN00 is conv_in (no module path inside a block)


def test_lr_weight_presets_equal_kohya():
    """kohya get_block_lr_weight's curves for 12 blocks, with a +base, and SDXL's 1.0 for BASE and OUT."""
    n = 12
    sd1 = block_layout(names.SD1_UNET_LAYOUT, sdxl=False)
    w = block_lr_weights("cosine", [0.5], "sine+0.25", sd1)
    cosine = [math.sin(math.pi * (i / (n - 1)) / 2) for i in reversed(range(n))]
    sine = [math.sin(math.pi * (i / (n - 1)) / 2) + 0.25 for i in range(n)]
    assert w == pytest.approx(cosine + [0.5] + sine)
    assert block_lr_weights("reverse_linear", [], "zeros", sd1) == pytest.approx(
        [i / (n - 1) for i in reversed(range(n))] + [1.0] + [0.0] * n)
    sdxl = block_layout(names.SDXL_UNET_LAYOUT, sdxl=True)
    w = block_lr_weights([], [0.0, 1.0, 2.0], "linear", sdxl)
    assert len(w) == 23 and w[0] == w[-1] == 1.0 and w[10:13] == [0.0, 1.0, 2.0] and w[13] == 0.0
    with pytest.raises(UserError, match=r"\[optimizer\] down_lr_weight: expected 12 values"):
        block_lr_weights([1.0] * 3, [], [], sd1)


# tiny SD1 U-Net: 2 levels x 1 layer -> IN00-IN03, MID, OUT00-OUT03 (attention in IN01, MID, OUT02, OUT03)
SD1_DIMS = [4, 2, 4, 4, 3, 4, 4, 0, 6]  # OUT02 rank 0: no LoRA there
SD1_ALPHAS = [1, 1, 1, 1, 3, 1, 1, 1, 1.5]
SD1_RUN = [f"network.block_dims={SD1_DIMS}", f"network.block_alphas={SD1_ALPHAS}", "network.rank=4", "network.alpha=2",
           "optimizer.name=\"adamw\"", "optimizer.lr=1e-2", "optimizer.down_lr_weight=[1, 0.5, 1, 1]",
           "optimizer.mid_lr_weight=[0.25]", "optimizer.loraplus_lr_ratio=4", "train.max_steps=2"]


def _kohya_modules(path):
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    mods = {k.split(".")[0]: (t[k].shape[0], float(t[k.split(".")[0] + ".alpha"])) for k in t if k.endswith("lora_down.weight")}
    return t, mods, meta


def test_tiny_sd1_block_dims_lr_weights_and_loraplus(tmp_path):
    from diffusers import DiffusionPipeline

    t = run_training(tmp_path, SD1_RUN)
    groups = {g["name"]: g["lr"] for g in t.optimizer.param_groups}
    assert groups == pytest.approx({"unet.IN01": 5e-3, "unet.IN01.lora_up": 2e-2, "unet.MID": 2.5e-3,
                                    "unet.MID.lora_up": 1e-2, "unet.OUT03": 1e-2, "unet.OUT03.lora_up": 4e-2})
    tensors, mods, meta = _kohya_modules(tmp_path / "tiny-smoke.safetensors")
    by_block = {}
    for name, (rank, alpha) in mods.items():
        by_block.setdefault(name.split("_attentions_")[0], set()).add((rank, alpha))
    assert by_block == {"lora_unet_down_blocks_0": {(2, 1.0)}, "lora_unet_mid_block": {(3, 3.0)},
                        "lora_unet_up_blocks_1": {(6, 1.5)}}  # up_blocks.1.attentions.0 = OUT02: none
    assert not any("up_blocks_1_attentions_0" in n for n in mods)
    args = json.loads(meta["ss_network_args"])
    assert args["block_dims"] == "4,2,4,4,3,4,4,0,6" and args["block_alphas"] == "1,1,1,1,3,1,1,1,1.5"
    assert args["down_lr_weight"] == "1,0.5,1,1" and args["mid_lr_weight"] == "0.25" and args["loraplus_lr_ratio"] == "4.0"
    # The files apply what was trained: A1111/ComfyUI's alpha/dim * up @ down on the kohya file, and
    # diffusers' loader on the diffusers file, both equal to the trained peft modules.
    unet = t.accelerator.unwrap_model(t.unet)
    for name, module in unet.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            k = "lora_unet_" + names.path_to_underscored(name)
            down, up = tensors[f"{k}.lora_down.weight"].float(), tensors[f"{k}.lora_up.weight"].float()
            delta = float(tensors[f"{k}.alpha"]) / down.shape[0] * (up @ down)
            assert delta.abs().max() > 5e-3  # trained (a wrong alpha would scale it 1.3-3x)
            assert torch.allclose(delta, module.get_delta_weight("default").float(), rtol=1e-2, atol=2e-4), name
    pipe = DiffusionPipeline.from_pretrained(str(resolve_model(t.recipe.model.pretrained)))
    pipe.load_lora_weights(str(tmp_path / "pytorch_lora_weights.safetensors"), adapter_name="file")
    loaded = {n: m.get_delta_weight("file") for n, m in pipe.unet.named_modules() if "file" in getattr(m, "lora_A", {})}
    trained = {n: m.get_delta_weight("default") for n, m in unet.named_modules() if "default" in getattr(m, "lora_A", {})}
    assert loaded.keys() == trained.keys() and len(loaded) == 24  # IN01, MID, OUT03: 8 projections each
    assert all(torch.allclose(loaded[n], trained[n], rtol=1e-2, atol=2e-4) for n in loaded)  # fp16 file


def test_tiny_sdxl_block_dims(tmp_path):
    """tiny SDXL: BASE, IN00-IN03, MID0-2, OUT00-OUT03, OUT = 13 values; attention in IN03, MID1, OUT00, OUT01."""
    dims = [4, 4, 4, 4, 2, 4, 5, 4, 0, 3, 4, 4, 4]
    t = run_training(tmp_path, ['model.pretrained="builtin:tiny-sdxl"', f"network.block_dims={dims}",
                                "network.rank=4", "network.alpha=2", "train.max_steps=1"])
    _, mods, meta = _kohya_modules(tmp_path / "tiny-smoke.safetensors")
    blocks = {}
    for name, (rank, alpha) in mods.items():
        blocks.setdefault(re.match(r"lora_unet_(input_blocks_\d+|middle_block_\d+|output_blocks_\d+)", name).group(1), set()).add((rank, alpha))
    assert blocks == {"input_blocks_3": {(2, 2.0)}, "middle_block_1": {(5, 2.0)}, "output_blocks_1": {(3, 2.0)}}
    assert json.loads(meta["ss_network_args"])["block_dims"] == ",".join(map(str, dims))
    assert t.global_step == 1


@pytest.mark.parametrize("override, message", [
    ("network.block_dims=[4, 4]", r"\[network\] block_dims: expected 9 values \(IN00..OUT03\) for this SD1/SD2 U-Net, got 2"),
    ("optimizer.up_lr_weight=[1, 1]", r"\[optimizer\] up_lr_weight: expected 4 values for this U-Net, got 2"),
])
def test_lengths_are_checked_against_the_unet(tmp_path, override, message):
    with pytest.raises(UserError, match=message):
        run_training(tmp_path, [override])


@pytest.mark.parametrize("override, key", [
    ("network.block_dims=[4, -1]", "[network] block_dims"),
    ("network.block_alphas=[0]", "[network] block_alphas"),
    ("optimizer.down_lr_weight=\"wave\"", "[optimizer] down_lr_weight"),
    ("optimizer.mid_lr_weight=[-1]", "[optimizer] mid_lr_weight"),
    ("optimizer.loraplus_lr_ratio=-2", "[optimizer] loraplus_lr_ratio"),
])
def test_values_are_checked(override, key):
    with pytest.raises(UserError) as exc:
        load_recipe("tiny-smoke", [override])
    assert f": {key}: " in str(exc.value) and "\n" not in str(exc.value)


def test_loraplus_rejected_for_loha():
    with pytest.raises(UserError, match=r"loraplus_lr_ratio: LoRA\+"):
        load_recipe("tiny-smoke", ['network.algo="loha"', "optimizer.loraplus_lr_ratio=16"])


def test_loraplus_groups_per_component():
    """lora_B (kohya lora_up) of each component in its own group at lr x that component's ratio."""
    from lora_kit.adapters.inject import inject_lora
    from lora_kit.models.presets import build_components
    from lora_kit.train.optim import param_groups

    c = build_components("tiny-sd15", 0)
    r = load_recipe("tiny-smoke", ["network.train_text_encoder=true", "optimizer.lr=1e-3", "optimizer.text_encoder_lr=1e-4",
                                   "optimizer.loraplus_lr_ratio=16", "optimizer.loraplus_text_encoder_lr_ratio=4"])
    ad = inject_lora(c["unet"], [c["text_encoder"]], r.network, torch.float32, opt=r.optimizer)
    groups = param_groups(ad, r.optimizer)
    assert [g["name"] for g in groups] == ["unet", "unet.lora_up", "text_encoder", "text_encoder.lora_up"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1.6e-2, 1e-4, 4e-4])
    ups = {id(p) for g in groups if g["name"].endswith("lora_up") for p in g["params"]}
    names_up = {n for n, p in zip(ad.unet_names + ad.text_encoder_names, ad.unet_params + ad.text_encoder_params) if id(p) in ups}
    assert names_up and all(".lora_B." in n for n in names_up)
    assert sum(len(g["params"]) for g in groups) == len(ad.unet_params) + len(ad.text_encoder_params)
    assert len(names_up) * 2 == len(ad.unet_params) + len(ad.text_encoder_params)  # one B per A


@pytest.mark.parametrize("algo", ["lora", "loha"])
def test_conv_block_dims_turn_convolutions_on_per_block(algo):
    """conv_block_dims with conv_rank = 0 (kohya: the 3x3 convs get LoRA where the block's conv dim > 0),
    alphas defaulting to the block's conv rank (scale 1); LoHa takes the same per-module patterns."""
    from lora_kit.adapters.inject import inject_lora
    from lora_kit.models.presets import build_components

    c = build_components("tiny-sd15", 0)
    conv = [0, 2, 0, 0, 3, 0, 0, 0, 1]  # IN01, MID, OUT03
    r = load_recipe("tiny-smoke", [f"network.conv_block_dims={conv}", f'network.algo="{algo}"', "network.rank=4", "network.alpha=4"])
    ad = inject_lora(c["unet"], [], r.network, torch.float32, opt=r.optimizer)
    convs = {n: m for n, m in c["unet"].named_modules() if n.endswith((".conv1", ".conv2")) and ".resnets." in n}
    adapted = {n: m for n, m in convs.items() if hasattr(m, "r")}
    labels = ad.plan.blocks.labels()
    got = {(labels[block_index(n, ad.plan.layout, ad.plan.blocks)], m.r["default"], m.scaling["default"]) for n, m in adapted.items()}
    assert got == {("IN01", 2, 1.0), ("MID", 3, 1.0), ("OUT03", 1, 1.0)}
    attn = [m for n, m in c["unet"].named_modules() if n.endswith("attn1.to_q")]
    assert attn and all(m.r["default"] == 4 for m in attn)  # linear layers keep rank everywhere
