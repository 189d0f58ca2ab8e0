"""`lora-kit merge --single-file`: one LDM checkpoint that diffusers' from_single_file (local config, offline)
loads into exactly the merged diffusers folder; SDXL's key map checked with diffusers' own readers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_kit.cli import main


def _same_weights(a, b, comps) -> None:
    for comp in comps:
        sa, sb = getattr(a, comp).state_dict(), getattr(b, comp).state_dict()
        sa = {k: v for k, v in sa.items() if not k.endswith("position_ids")}
        sb = {k: v for k, v in sb.items() if not k.endswith("position_ids")}
        assert sa.keys() == sb.keys(), comp
        bad = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not bad, (comp, bad[:5])


@pytest.fixture(scope="module")
def merged_sd15(tmp_path_factory, tiny_sd15_dir):
    from diffusers import StableDiffusionPipeline

    from lora_kit.infer.synthetic import write_random_lora

    d = tmp_path_factory.mktemp("single")
    base = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, safety_checker=None, requires_safety_checker=False)
    lora = write_random_lora(d / "l.safetensors", base.unet, base.text_encoder, rank=4, seed=5, fmt="kohya")
    assert main(["merge", str(tiny_sd15_dir), f"{lora}:0.8", str(d / "folder")]) == 0
    assert main(["merge", str(tiny_sd15_dir), f"{lora}:0.8", str(d / "merged.safetensors"), "--single-file"]) == 0
    return d


def test_single_file_loads_with_from_single_file_as_the_merged_folder(merged_sd15, tiny_sd15_dir):
    from diffusers import StableDiffusionPipeline

    kw = {"safety_checker": None, "requires_safety_checker": False}
    folder = StableDiffusionPipeline.from_pretrained(merged_sd15 / "folder", **kw)
    single = StableDiffusionPipeline.from_single_file(str(merged_sd15 / "merged.safetensors"), config=str(tiny_sd15_dir),
                                                      local_files_only=True, **kw)
    _same_weights(folder, single, ("unet", "vae", "text_encoder"))
    base = StableDiffusionPipeline.from_pretrained(tiny_sd15_dir, **kw)
    assert not torch.equal(base.unet.state_dict()["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"],
                           single.unet.state_dict()["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"])
    images = []
    for pipe in (folder, single):
        out = pipe("a star", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
        images.append(out.images[0])
    assert np.array_equal(images[0], images[1])


def test_single_file_has_ldm_keys_and_no_paths(merged_sd15):
    from safetensors import safe_open

    path = merged_sd15 / "merged.safetensors"
    keys = set(load_file(str(path)))
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" in keys
    assert "model.diffusion_model.input_blocks.1.0.in_layers.2.weight" in keys  # resnet conv1
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys and "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in keys
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert str(merged_sd15) not in str(meta) and "l.safetensors" in meta["lora_kit.merged"]


def test_single_file_refuses_a_folder_name(tmp_path, tiny_sd15_dir, capsys):
    from diffusers import UNet2DConditionModel

    from lora_kit.infer.synthetic import write_random_lora

    unet = UNet2DConditionModel.from_pretrained(tiny_sd15_dir, subfolder="unet")
    lora = write_random_lora(tmp_path / "l.safetensors", unet, rank=2, seed=1, fmt="kohya")
    assert main(["merge", str(tiny_sd15_dir), str(lora), str(tmp_path / "out"), "--single-file"]) == 2
    assert "*.safetensors" in capsys.readouterr().err


def test_sd2_and_sdxl_key_maps_invert_with_diffusers_readers(tmp_path, tiny_sd2v_dir, tiny_sdxl_dir):
    """diffusers' from_single_file cannot tell the tiny SDXL's two 32-wide text encoders apart (it picks CLIP-L
    by width), so SDXL is checked against the converters from_single_file uses; SD2 loads whole."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, convert_open_clip_checkpoint,
    )

    from lora_kit.adapters.single_file import pipeline_to_ldm
    from lora_kit.utils import atomic_write

    sd2 = StableDiffusionPipeline.from_pretrained(tiny_sd2v_dir, safety_checker=None, requires_safety_checker=False)
    ckpt = pipeline_to_ldm(sd2, "sd2v")
    path = tmp_path / "sd2v-single.safetensors"
    atomic_write(path, lambda tmp: save_file(ckpt, str(tmp)))
    back = StableDiffusionPipeline.from_single_file(str(path), config=str(tiny_sd2v_dir), local_files_only=True,
                                                    safety_checker=None, requires_safety_checker=False)
    _same_weights(sd2, back, ("unet", "vae", "text_encoder"))

    xl = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    ckpt = pipeline_to_ldm(xl, "sdxl")
    unet = convert_ldm_unet_checkpoint(ckpt, dict(xl.unet.config))
    vae = convert_ldm_vae_checkpoint(ckpt, dict(xl.vae.config))
    te1 = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(ckpt).items()}
    te2 = convert_open_clip_checkpoint(xl.text_encoder_2, ckpt, prefix="conditioner.embedders.1.model.")
    for got, module in ((unet, xl.unet), (vae, xl.vae), (te1, xl.text_encoder), (te2, xl.text_encoder_2)):
        want = {k: v for k, v in module.state_dict().items() if not k.endswith("position_ids")}
        got = {k: v for k, v in got.items() if not k.endswith("position_ids")}
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
