"""Exported files load everywhere at exactly the trained strength (tiny models, CPU, seeded).

For each case the same seeded generation is run with
  (a) the in-memory peft adapter the trainer holds,
  (b) the diffusers file through `pipe.load_lora_weights`,
  (c) the kohya file through `pipe.load_lora_weights` (diffusers' kohya reader, like A1111/ComfyUI keys),
  (d) the `merge` output with no adapter at all,
and the images must agree within TOL (float32 everywhere; measured differences are 0 for (b)/(c) and
~1e-6 for the fused weights of (d)). Each case also checks that the LoRA visibly changes the image, so
equality is not trivially true, and (alpha != rank) that ignoring alpha would have been caught.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lora_kit.adapters import io

TOL = 1e-4  # max abs difference of [0, 1] RGB pixels
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def load_pipe(model_dir):
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe) -> np.ndarray:
    out = pipe("a red square on a blue background", num_inference_steps=2, height=64, width=64,
               generator=torch.Generator().manual_seed(0), output_type="np")
    return out.images[0]


def add_random_adapters(pipe, unet_cfg, te_cfg):
    """peft adapters with random, non-zero A and B (init_lora_weights=False), as after some training."""
    from peft import inject_adapter_in_model

    torch.manual_seed(1)
    pipe.unet.add_adapter(unet_cfg)
    tes = [t for t in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if t is not None] if te_cfg else []
    for te in tes:
        # transformers 5.24's `add_adapter` demands peft >= 0.22 (unreleased); peft's own injector is the same layer.
        inject_adapter_in_model(te_cfg, te)
    return tes


def export(pipe, tes, unet_cfg, te_cfg, family, out_dir, precision="fp32"):
    from peft import get_peft_model_state_dict

    unet_sd = get_peft_model_state_dict(pipe.unet)
    te_sds = [get_peft_model_state_dict(te) for te in tes]
    info = {"family": family, "output_name": "case", "rank": unet_cfg.r, "alpha": unet_cfg.lora_alpha}
    return io.write_adapter_files(out_dir, "case", unet_sd, te_sds, info, unet_config=unet_cfg, text_encoder_config=te_cfg,
                                  unet_model_config=dict(pipe.unet.config), precision=precision)


def lora_cfg(r, alpha, targets, alpha_pattern=None):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, alpha_pattern=alpha_pattern or {})


def run_case(model_dir, family, unet_cfg, te_cfg, tmp_path, kohya_via_diffusers=True):
    from lora_kit.adapters.tools.merge import merge_loras

    pipe = load_pipe(model_dir)
    base = render(pipe)
    tes = add_random_adapters(pipe, unet_cfg, te_cfg)
    images = {"peft": render(pipe)}
    files = export(pipe, tes, unet_cfg, te_cfg, family, tmp_path)
    for kind in ("diffusers", "kohya") if kohya_via_diffusers else ("diffusers",):
        p = load_pipe(model_dir)
        p.load_lora_weights(str(files[kind]))
        images[kind] = render(p)
    merged = merge_loras(str(model_dir), [(str(files["kohya"]), 1.0)], tmp_path / "merged")
    images["merged"] = render(load_pipe(merged))
    assert np.abs(images["peft"] - base).max() > 0.05, "the LoRA must change the image for the test to mean anything"
    diffs = {k: float(np.abs(v - images["peft"]).max()) for k, v in images.items()}
    assert all(d <= TOL for d in diffs.values()), diffs
    return pipe, files, images


@pytest.mark.parametrize("with_te", [False, True], ids=["unet", "unet+te"])
def test_sd15_alpha_equals_rank(tiny_sd15_dir, tmp_path, with_te):
    run_case(tiny_sd15_dir, "sd1", lora_cfg(4, 4, UNET_TARGETS), lora_cfg(4, 4, TE_TARGETS) if with_te else None, tmp_path)


@pytest.mark.parametrize("with_te", [False, True], ids=["unet", "unet+te"])
def test_sd15_alpha_differs_from_rank(tiny_sd15_dir, tmp_path, with_te):
    te_cfg = lora_cfg(2, 1, TE_TARGETS) if with_te else None
    _, files, images = run_case(tiny_sd15_dir, "sd1", lora_cfg(4, 12, UNET_TARGETS), te_cfg, tmp_path)
    # A loader that ignores alpha (diffusers without lora_adapter_metadata) would give another image.
    tensors, meta = io.load_lora_file(files["diffusers"])
    stripped = io.save_lora_file(tmp_path / "no_meta" / "pytorch_lora_weights.safetensors", tensors, {"format": "pt"}, precision=None)
    p = load_pipe(tiny_sd15_dir)
    p.load_lora_weights(str(stripped.parent))
    assert np.abs(render(p) - images["peft"]).max() > 0.01


def test_text_encoder_mlp_adapters_load_at_the_trained_strength(tiny_sd15_dir, tmp_path):
    """network.text_encoder_target = "attn-mlp" (kohya trains CLIPAttention and CLIPMLP): the fc1/fc2 adapters go
    into both files under the names kohya writes, and every loader applies them."""
    from lora_kit.adapters.inject import text_encoder_lora_config
    from lora_kit.config.schema import NetworkConfig

    targets = set(text_encoder_lora_config(NetworkConfig(rank=2, alpha=1.0, text_encoder_target="attn-mlp")).target_modules)
    assert targets == {*TE_TARGETS, "fc1", "fc2"}
    assert set(text_encoder_lora_config(NetworkConfig(rank=2, alpha=1.0)).target_modules) == set(TE_TARGETS)
    _, files, _ = run_case(tiny_sd15_dir, "sd1", lora_cfg(4, 4, UNET_TARGETS), lora_cfg(2, 1, sorted(targets)), tmp_path)
    tensors, _ = io.load_lora_file(files["kohya"])
    assert "lora_te_text_model_encoder_layers_0_mlp_fc2.lora_down.weight" in tensors


def test_text_encoder_value_adapters_load_and_keep_out_proj(tiny_sd15_dir, tmp_path):
    """network.text_encoder_target = "values" adapts v_proj and out_proj only; both files load at the trained
    strength. out_proj is kept because diffusers 0.42.1 cannot read a kohya text-encoder LoRA without it (it
    infers the format from `to_out_lora` keys): the last assertion pins that, so a diffusers fix shows up here."""
    from lora_kit.adapters.inject import text_encoder_lora_config
    from lora_kit.config.schema import NetworkConfig

    targets = sorted(text_encoder_lora_config(NetworkConfig(rank=2, alpha=1.0, text_encoder_target="values")).target_modules)
    assert targets == ["out_proj", "v_proj"]
    _, files, _ = run_case(tiny_sd15_dir, "sd1", lora_cfg(4, 4, UNET_TARGETS), lora_cfg(2, 1, targets), tmp_path / "values")
    te_keys = {k.split(".")[0] for k in io.load_lora_file(files["kohya"])[0] if k.startswith("lora_te_")}
    assert {"_".join(k.split("_")[-2:]) for k in te_keys} == {"v_proj", "out_proj"}
    _, files, _ = run_case(tiny_sd15_dir, "sd1", lora_cfg(4, 4, UNET_TARGETS), lora_cfg(2, 1, ["v_proj"]), tmp_path / "v", kohya_via_diffusers=False)
    with pytest.raises(ValueError, match="infer state dict type"):
        load_pipe(tiny_sd15_dir).load_lora_weights(str(files["kohya"]))


def kohya_delta(tensors, name):
    """delta-W of one kohya module the way A1111 (network_lora.py) and ComfyUI compute it: alpha/dim * up @ down."""
    down, up = tensors[f"{name}.lora_down.weight"].float(), tensors[f"{name}.lora_up.weight"].float()
    return float(tensors[f"{name}.alpha"]) / down.shape[0] * (up @ down)


@pytest.mark.filterwarnings("ignore:The following alpha_pattern keys:RuntimeWarning")  # the diffusers bug below
def test_per_module_alphas(tiny_sd15_dir, tmp_path):
    """alpha_pattern (different alphas per module): diffusers file and merge exact; kohya file exact by the
    A1111/ComfyUI formula. diffusers' own kohya reader (0.42.1) mis-keys per-module alphas of attention
    layers (`_get_alpha_name` expects `.lora.` in `...processor.to_k_lora.down.weight`) and then applies the
    majority alpha everywhere; the last assertion pins that, so a diffusers fix shows up here."""
    from lora_kit.adapters import names

    cfg = lora_cfg(4, 12, UNET_TARGETS, alpha_pattern={"attn2.to_k": 2})
    pipe, files, images = run_case(tiny_sd15_dir, "sd1", cfg, None, tmp_path, kohya_via_diffusers=False)
    tensors, _ = io.load_lora_file(files["kohya"])
    checked = 0
    for name, module in pipe.unet.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            kname = "lora_unet_" + names.path_to_underscored(name)
            assert torch.allclose(kohya_delta(tensors, kname), module.get_delta_weight("default"), atol=1e-6), name
            checked += 1
    assert checked == len({k.split(".")[0] for k in tensors}) == 32  # 8 transformer blocks x 4
    assert {float(v) for k, v in tensors.items() if k.endswith(".alpha")} == {12.0, 2.0}
    p = load_pipe(tiny_sd15_dir)
    p.load_lora_weights(str(files["kohya"]))
    assert np.abs(render(p) - images["peft"]).max() > 0.01  # diffusers bug canary, see docstring


def test_sdxl_kohya_and_diffusers_files_with_both_text_encoders(tiny_sdxl_dir, tmp_path):
    _, files, _ = run_case(tiny_sdxl_dir, "sdxl", lora_cfg(4, 2, UNET_TARGETS), lora_cfg(2, 3, TE_TARGETS), tmp_path)
    tensors, meta = io.load_lora_file(files["kohya"])
    assert any(k.startswith("lora_unet_input_blocks_") for k in tensors)
    assert any(k.startswith("lora_te2_") for k in tensors) and meta["ss_base_model_version"] == "sdxl_base_v1-0"


def test_merge_scale_matches_adapter_weight(tiny_sd15_dir, tmp_path):
    from lora_kit.adapters.tools.merge import merge_loras

    pipe = load_pipe(tiny_sd15_dir)
    tes = add_random_adapters(pipe, lora_cfg(4, 8, UNET_TARGETS), lora_cfg(2, 2, TE_TARGETS))
    files = export(pipe, tes, lora_cfg(4, 8, UNET_TARGETS), lora_cfg(2, 2, TE_TARGETS), "sd1", tmp_path)
    ref = load_pipe(tiny_sd15_dir)
    ref.load_lora_weights(str(files["diffusers"]), adapter_name="x")
    ref.set_adapters(["x"], adapter_weights=[0.5])
    merged = merge_loras(str(tiny_sd15_dir), [(str(files["diffusers"]), 0.5)], tmp_path / "half")
    assert np.abs(render(load_pipe(merged)) - render(ref)).max() <= TOL


def test_fp16_files_load_close_to_fp32(tiny_sd15_dir, tmp_path):
    pipe = load_pipe(tiny_sd15_dir)
    cfg = lora_cfg(4, 12, UNET_TARGETS)
    tes = add_random_adapters(pipe, cfg, None)
    ref = render(pipe)
    files = export(pipe, tes, cfg, None, "sd1", tmp_path, precision="fp16")
    p = load_pipe(tiny_sd15_dir)
    p.load_lora_weights(str(files["kohya"]))
    assert np.abs(render(p) - ref).max() < 2e-2  # fp16 rounding of A and B only


def test_dora_diffusers_file_and_merge(tiny_sd15_dir, tmp_path):
    """DoRA travels in the diffusers file (lora_magnitude_vector + use_dora); no kohya file is written for it."""
    from peft import LoraConfig

    from lora_kit.adapters.tools.merge import merge_loras

    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=UNET_TARGETS, init_lora_weights=False, use_dora=True)
    pipe = load_pipe(tiny_sd15_dir)
    base = render(pipe)
    add_random_adapters(pipe, cfg, None)
    for name, module in pipe.unet.named_modules():  # move the magnitudes off their initial norms
        if hasattr(module, "lora_magnitude_vector") and "default" in module.lora_magnitude_vector:
            module.lora_magnitude_vector["default"].weight.data.mul_(1.2)
    ref = render(pipe)
    files = export(pipe, [], cfg, None, "sd1", tmp_path)
    assert set(files) == {"diffusers"} and np.abs(ref - base).max() > 0.05
    p = load_pipe(tiny_sd15_dir)
    p.load_lora_weights(str(files["diffusers"]))
    merged = merge_loras(str(tiny_sd15_dir), [(str(files["diffusers"]), 1.0)], tmp_path / "merged")
    assert np.abs(render(p) - ref).max() <= TOL
    assert np.abs(render(load_pipe(merged)) - ref).max() <= TOL


def test_conv_lora_locon_both_files(tiny_sd15_dir, tmp_path):
    """`conv_rank`/`conv_alpha` (kohya conv_dim/conv_alpha): the ResNet 3x3 convolutions get their own rank and
    alpha; both files carry them (kohya: 4-D lora_down/lora_up and the conv alpha per module) and load exactly."""
    from lora_kit.adapters.inject import unet_lora_config
    from lora_kit.config.schema import NetworkConfig

    cfg = unet_lora_config(NetworkConfig(rank=4, alpha=4, target="attn", conv_rank=2, conv_alpha=1))
    cfg.init_lora_weights = False
    _, files, _ = run_case(tiny_sd15_dir, "sd1", cfg, None, tmp_path)
    tensors, meta = io.load_lora_file(files["kohya"])
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert tensors[f"{conv}.lora_down.weight"].shape[:2] == (2, 32) and tensors[f"{conv}.lora_down.weight"].ndim == 4
    assert tensors[f"{conv}.lora_up.weight"].shape[1:] == (2, 1, 1)
    assert float(tensors[f"{conv}.alpha"]) == 1.0 and float(tensors["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.alpha"]) == 4.0
