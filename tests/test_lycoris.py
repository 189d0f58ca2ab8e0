"""LyCORIS LoHa/LoKr: the exported file's update equals the trained peft module's under A1111's and ComfyUI's
formulas (reimplemented below from their published source), and info/convert/merge/grids handle the files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lora_kit.adapters import inject, io, lycoris
from lora_kit.adapters.tools.convert import convert_file
from lora_kit.adapters.tools.info import describe
from lora_kit.config.schema import NetworkConfig
from lora_kit.errors import UserError
from lora_kit.models.presets import build_components

# ---------------------------------------------------------------- the clients' formulas, from their source


def _rebuild_conventional(up, down, shape):  # A1111 extensions-builtin/Lora/lyco_helpers.py
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    return (up @ down).reshape(shape)


def a1111_updown(w: dict, orig_shape) -> torch.Tensor:
    """network_hada.py / network_lokr.py calc_updown + network.py finalize_updown/calc_scale (multiplier 1)."""
    dim = None
    if "hada_w1_a" in w:  # NetworkModuleHada
        w1a, w1b, w2a, w2b = (w[k].float() for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
        dim = w1b.shape[0]
        output_shape = [w1a.size(0), w1b.size(1)]
        updown = _rebuild_conventional(w1a, w1b, output_shape) * _rebuild_conventional(w2a, w2b, output_shape)
    else:  # NetworkModuleLokr
        if "lokr_w1" in w:
            w1 = w["lokr_w1"].float()
        else:
            w1 = w["lokr_w1_a"].float() @ w["lokr_w1_b"].float()
            dim = w["lokr_w1_b"].shape[0]
        if "lokr_w2" in w:
            w2 = w["lokr_w2"].float()
        else:
            w2 = w["lokr_w2_a"].float() @ w["lokr_w2_b"].float()
            dim = w["lokr_w2_b"].shape[0]
        output_shape = [w1.size(0) * w2.size(0), w1.size(1) * w2.size(1)]
        if len(orig_shape) == 4:
            output_shape = orig_shape
        if len(w2.shape) == 4:  # lyco_helpers.make_kron
            w1 = w1.unsqueeze(2).unsqueeze(2)
        updown = torch.kron(w1, w2.contiguous()).reshape(output_shape)
    if updown.numel() == torch.Size(orig_shape).numel():
        updown = updown.reshape(orig_shape)
    alpha = float(w["alpha"]) if "alpha" in w else None
    scale = alpha / dim if dim is not None and alpha is not None else 1.0
    return updown * scale


def comfy_diff(w: dict, weight_shape) -> torch.Tensor:
    """comfy/weight_adapter/loha.py and lokr.py calculate_weight (strength 1, no Tucker core)."""
    alpha = float(w["alpha"]) if "alpha" in w else None
    if "hada_w1_a" in w:
        scale = alpha / w["hada_w1_b"].shape[0] if alpha is not None else 1.0
        m1 = torch.mm(w["hada_w1_a"].float(), w["hada_w1_b"].float())
        m2 = torch.mm(w["hada_w2_a"].float(), w["hada_w2_b"].float())
        return scale * (m1 * m2).reshape(weight_shape)
    dim = None
    w1, w2 = w.get("lokr_w1"), w.get("lokr_w2")
    if w1 is None:
        dim = w["lokr_w1_b"].shape[0]
        w1 = torch.mm(w["lokr_w1_a"].float(), w["lokr_w1_b"].float())
    if w2 is None:
        dim = w["lokr_w2_b"].shape[0]
        w2 = torch.mm(w["lokr_w2_a"].float(), w["lokr_w2_b"].float())
    w1, w2 = w1.float(), w2.float()
    if len(w2.shape) == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    scale = alpha / dim if alpha is not None and dim is not None else 1.0
    return scale * torch.kron(w1, w2).reshape(weight_shape)


# ---------------------------------------------------------------- helpers


def trained_sd15(algo: str, rank: int, seed: int = 0, std: float = 0.2):
    """Tiny SD1 U-Net + CLIP with peft LoHa/LoKr adapters (attention, ResNet convs, text encoder), weights
    seeded non-zero as after training."""
    c = build_components("tiny-sd15")
    net = NetworkConfig(rank=rank, alpha=3.0, algo=algo, conv_rank=2, conv_alpha=1.0, train_text_encoder=True, text_encoder_rank=2)
    ad = inject.inject_lora(c["unet"], [c["text_encoder"]], net, torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ad.unet_params + ad.text_encoder_params:
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return c, ad


def export(tmp_path, c, ad, name="x", precision="fp32"):
    usd, tsds = inject.adapter_state_dicts(c["unet"], [c["text_encoder"]], True)
    info = {"family": "sd1", "rank": ad.unet_config.r, "alpha": ad.unet_config.alpha, "network_args": {"conv_dim": 2, "conv_alpha": 1.0}}
    return io.write_adapter_files(tmp_path, name, usd, tsds, info, unet_config=ad.unet_config,
                                  text_encoder_config=ad.text_encoder_config, precision=precision)


def peft_layers(c):
    """kohya module name (as A1111 maps SD1 names: the diffusers path with `_`) -> trained peft layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {}
    for prefix, model, extra in (("lora_unet_", c["unet"], ""), ("lora_te_", c["text_encoder"], "text_model_")):
        for name, m in model.named_modules():
            if isinstance(m, BaseTunerLayer):
                out[prefix + extra + name.replace(".", "_")] = m
    return out


def file_modules(path) -> dict:
    groups: dict = {}
    for key, t in load_file(str(path)).items():
        name, _, kind = key.partition(".")
        groups.setdefault(name, {})[kind] = t
    return groups


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("algo,rank", [("loha", 2), ("lokr", 2), ("lokr", 8)], ids=["loha", "lokr-decomposed", "lokr-full"])
def test_file_update_equals_trained_module_in_a1111_and_comfyui(tmp_path, algo, rank):
    c, ad = trained_sd15(algo, rank)
    files = export(tmp_path, c, ad)
    assert set(files) == {"kohya"}  # no diffusers layout exists for LoHa/LoKr
    modules, layers = file_modules(files["kohya"]), peft_layers(c)
    assert modules.keys() == layers.keys()
    kinds = {k for parts in modules.values() for k in parts}
    assert kinds <= set(lycoris.KEYS) | {"alpha"} and "alpha" in kinds
    assert any(len(layers[n].get_base_layer().weight.shape) == 4 for n in modules)  # LoCon convolutions included
    if (algo, rank) == ("lokr", 8):
        assert any("lokr_w2" in p for p in modules.values())  # full factors: scale baked in (clients use 1)
    for name, parts in modules.items():
        layer = layers[name]
        trained = layer.get_delta_weight("default").detach().float()
        shape = layer.get_base_layer().weight.shape
        tol = 1e-5 * float(trained.abs().max())
        assert torch.allclose(a1111_updown(parts, shape), trained, rtol=1e-5, atol=tol), name
        assert torch.allclose(comfy_diff(parts, shape), trained, rtol=1e-5, atol=tol), name
    with safe_open(str(files["kohya"]), "pt") as f:
        meta = f.metadata()
    args = json.loads(meta["ss_network_args"])
    assert meta["ss_network_module"] == "lycoris.kohya" and args["algo"] == algo
    assert args["conv_dim"] == "2" and (args.get("factor") == "-1") == (algo == "lokr")


def test_lora_kit_reader_computes_the_same_update(tmp_path):
    c, ad = trained_sd15("loha", 2)
    files = export(tmp_path, c, ad, precision="fp16")
    parsed = io.read_lora_file(files["kohya"])
    assert isinstance(parsed, lycoris.ParsedLycoris) and parsed.algo == "loha" and parsed.family == "sd1"
    modules = file_modules(files["kohya"])
    layers = peft_layers(c)
    names = {}
    for comp, mod, delta in parsed.deltas():
        prefix = "lora_unet_" if comp == "unet" else "lora_te_"
        names[prefix + mod.replace(".", "_")] = delta
    assert names.keys() == modules.keys()
    for name, delta in names.items():
        shape = layers[name].get_base_layer().weight.shape
        assert torch.allclose(delta.reshape(shape), a1111_updown(modules[name], shape), rtol=1e-6, atol=1e-7)


def test_info_convert_and_resize_on_lycoris_files(tmp_path):
    c, ad = trained_sd15("lokr", 2)
    src = export(tmp_path, c, ad, precision="fp16")["kohya"]
    info = describe(src)
    assert (info["algo"], info["format"], info["family"]) == ("lokr", "kohya", "sd1")
    ranks = {e["rank"] for g in info["groups"].values() for e in g}
    assert ranks == {2} and info["hash_check"]["status"] == "match"
    # kohya -> kohya (e.g. a precision change) is a lossless rewrite; diffusers has no LoHa/LoKr layout
    out = convert_file(src, "kohya", tmp_path / "copy.safetensors")
    a, b = load_file(str(src)), load_file(str(out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="no LoHa/LoKr layout"):
        convert_file(src, "diffusers", tmp_path / "d")
    from lora_kit.adapters.tools.resize import resize_parsed

    with pytest.raises(UserError, match="LyCORIS lokr"):
        resize_parsed(io.read_lora_file(src), 1)
    from lora_kit.adapters.tools.info import format_text

    c, ad = trained_sd15("lokr", 8)  # attention factors full: no rank, A1111 scale 1
    full = describe(export(tmp_path / "full", c, ad)["kohya"])
    attn = [e for e in full["groups"]["unet down 0"] if e["rank"] is None]
    assert attn and all(e["scale"] == 1.0 for e in attn)
    text = format_text(full)
    assert "algo lokr" in text and "rank full" in text


def test_sdxl_lycoris_uses_stability_block_names(tmp_path):
    c = build_components("tiny-sdxl")
    net = NetworkConfig(rank=2, alpha=1.0, algo="loha", conv_rank=2)
    ad = inject.inject_lora(c["unet"], [c["text_encoder"], c["text_encoder_2"]], net, torch.float32)
    usd, _ = inject.adapter_state_dicts(c["unet"], [], False)
    files = io.write_adapter_files(tmp_path, "xl", usd, [], {"family": "sdxl"}, unet_config=ad.unet_config,
                                   unet_model_config=dict(c["unet"].config), precision="fp32")
    keys = load_file(str(files["kohya"])).keys()
    assert all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")) for k in keys)
    parsed = io.read_lora_file(files["kohya"])  # the tiny layout is recorded in the file
    assert {m for _, m, _ in parsed.modules()} == {k.rsplit(".", 1)[0] for k in lycoris._normalize(usd, False)}


def test_merge_adds_the_lycoris_update(tmp_path, tiny_sd15_dir):
    from diffusers import UNet2DConditionModel

    from lora_kit.adapters.tools.merge import merge_loras

    c, ad = trained_sd15("loha", 2, std=0.3)
    src = export(tmp_path, c, ad)["kohya"]
    out = merge_loras(str(tiny_sd15_dir), [(str(src), 0.5)], tmp_path / "merged")
    base = UNet2DConditionModel.from_pretrained(tiny_sd15_dir, subfolder="unet")
    merged = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    for comp, mod, delta in io.read_lora_file(src).deltas():
        if comp != "unet":
            continue
        w0, w1 = base.get_submodule(mod).weight, merged.get_submodule(mod).weight
        assert torch.allclose(w1, w0 + 0.5 * delta.reshape(w0.shape), atol=1e-6), mod


def test_grid_stacks_a_loha_and_a_lora_at_different_weights(tmp_path, tiny_sd15_dir):
    import numpy as np
    from PIL import Image

    from lora_kit.infer.grid import render_grid
    from lora_kit.infer.pipeline import LoraPipeline
    from lora_kit.infer.spec import Axis, CellParams, GridSpec, LoraRef
    from lora_kit.infer.synthetic import write_random_lora

    c, ad = trained_sd15("loha", 2, std=0.3)
    loha = str(export(tmp_path, c, ad, name="loha")["kohya"])
    pipe = LoraPipeline.load(str(tiny_sd15_dir))
    lora = str(write_random_lora(tmp_path / "lora.safetensors", pipe.pipe.unet, rank=4, seed=3, fmt="kohya"))
    mod = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # carries both adapters
    w0 = pipe.pipe.unet.get_submodule(mod).weight.detach().clone()
    d_loha = next(d for comp, m, d in io.read_lora_file(loha).deltas() if comp == "unet" and m == mod)
    lp = io.read_lora_file(lora)
    d_lora = lp.scale(f"unet.{mod}") * lp.unet[f"{mod}.lora_B.weight"] @ lp.unet[f"{mod}.lora_A.weight"]
    pipe.apply_loras([LoraRef(loha, 0.7), LoraRef(lora, -0.4)])
    base = pipe.pipe.unet.get_submodule(mod).get_base_layer().weight
    assert torch.allclose(base, w0 + 0.7 * d_loha + -0.4 * d_lora, atol=1e-6)
    pipe.unfuse()
    assert torch.equal(pipe.pipe.unet.get_submodule(mod).get_base_layer().weight, w0)  # exactly pristine again
    spec = GridSpec(model=str(tiny_sd15_dir), base=CellParams(prompt="a star", steps=2, seed=1,
                    loras=[LoraRef(loha, 0.7, name="loha"), LoraRef(lora, 0.4, name="lora")]),
                    cols=[Axis("weight", [0.0, 1.0], target="loha")], batch_size=1, base_distance=False)
    result = render_grid(spec, tmp_path / "grid", pipeline=pipe, progress=False)
    cells = [np.asarray(Image.open(result.out_dir / c["file"]).convert("RGB"), dtype=np.int16) for c in result.manifest["cells"]]
    assert len(cells) == 2 and np.abs(cells[0] - cells[1]).max() > 0  # the LoHa weight changes the image
    assert Image.open(result.grid_path).size[0] >= 2 * 64


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_training_exports_lycoris_and_resumes_exactly(tmp_path, algo):
    from tests.train_utils import run_training

    args = ["train.max_steps=4", f"network.algo={algo}", "network.rank=2", "network.alpha=1", "network.conv_rank=2",
            "optimizer.lr=1e-2", "save.precision=fp32"]
    full = run_training(tmp_path / "full", args)
    files = json.loads((tmp_path / "full" / "summary.json").read_text())["files"]
    assert files == {"kohya": "tiny-smoke.safetensors"} and not (tmp_path / "full" / "pytorch_lora_weights.safetensors").exists()
    # the file's update (A1111 formula) is the trained module's
    modules = file_modules(tmp_path / "full" / "tiny-smoke.safetensors")
    layers = peft_layers({"unet": full.accelerator.unwrap_model(full.unet), "text_encoder": torch.nn.Module()})
    assert modules.keys() == layers.keys()
    moved = 0.0
    for name, parts in modules.items():
        trained = layers[name].get_delta_weight("default").detach().float()
        moved = max(moved, float(trained.abs().max()))
        shape = layers[name].get_base_layer().weight.shape
        assert torch.allclose(a1111_updown(parts, shape), trained, rtol=1e-5, atol=1e-5 * float(trained.abs().max()) + 1e-12)
    assert moved > 0  # trained away from the zero-update init
    part = tmp_path / "part"
    first = run_training(part, args, stop_after=2)
    assert first.global_step == 2 and not (part / "tiny-smoke.safetensors").exists()
    assert [c.name for c in (part / "checkpoints").iterdir()] == ["checkpoint-000002"]  # adapter_state_dicts of peft LoHa/LoKr
    run_training(part, args, resume="latest")
    a, b = (load_file(str(p / "tiny-smoke.safetensors")) for p in (tmp_path / "full", part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("overrides,key", [
    (["network.algo=loha", "network.use_dora=true"], "[network] use_dora"),
    (["network.algo=lokr", "network.dropout=0.1"], "[network] dropout"),
    (["network.algo=loha", "network.init=pissa"], "[network] init"),
    (["network.factor=4"], "[network] factor"),
    (["network.algo=lokr", "network.factor=0"], "[network] factor"),
])
def test_recipe_checks_name_the_key(overrides, key):
    from lora_kit.config.load import load_recipe

    with pytest.raises(UserError) as err:
        load_recipe("tiny-smoke", overrides)
    assert key in str(err.value) and "\n" not in str(err.value)
    assert load_recipe("tiny-smoke", ["network.algo=lokr", "network.factor=4"]).network.factor == 4


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_tucker_conv_cores_apply_like_a1111(algo):
    """LyCORIS use_tucker files (hada_t1/t2, lokr_t2; peft's use_effective_conv2d) read by lora-kit's formula."""
    from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model

    torch.manual_seed(0)
    holder = torch.nn.Module()
    holder.conv = torch.nn.Conv2d(16, 24, 3)
    cfg = (LoHaConfig if algo == "loha" else LoKrConfig)(r=2, alpha=3, target_modules=["conv"], init_weights=False,
                                                          use_effective_conv2d=True)
    inject_adapter_in_model(cfg, holder)
    layer = holder.conv
    parts = {k: getattr(layer, k)["default"].detach() for k in lycoris.KEYS if "default" in getattr(layer, k, {})}
    assert {"hada_t1", "lokr_t2"} & set(parts)
    want = layer.get_delta_weight("default").detach()
    got = lycoris.delta_weight(parts, 3 / 2, want.shape)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
