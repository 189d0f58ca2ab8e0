"""Grids on the tiny SDXL model: LoRA (kohya and diffusers files), fusing and ControlNet."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lora_kit.infer.grid import render_grid
from lora_kit.infer.parameters import parse_parameters
from lora_kit.infer.pipeline import LoraPipeline
from lora_kit.infer.spec import Axis, CellParams, ControlRef, GridSpec, LoraRef
from lora_kit.infer.synthetic import random_controlnet, write_random_lora


@pytest.fixture(scope="module")
def xl(tiny_sdxl_dir, tmp_path_factory):
    pipe = LoraPipeline.load(str(tiny_sdxl_dir))
    d = tmp_path_factory.mktemp("xl")
    unet, te = pipe.pipe.unet, pipe.pipe.text_encoder
    write_random_lora(d / "xl.safetensors", unet, te, rank=4, seed=1, fmt="peft")
    write_random_lora(d / "xl_kohya.safetensors", unet, te, rank=4, seed=1, fmt="kohya")
    random_controlnet(unet, pipe.pipe.vae_scale_factor, seed=0).save_pretrained(d / "cn")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "control.png")
    return pipe, d


def _img(result, i) -> np.ndarray:
    return np.asarray(Image.open(result.out_dir / result.cells[i]["file"]).convert("RGB"), np.int16)


def test_sdxl_grid_with_lora_and_controlnet(xl, tmp_path):
    pipe, d = xl
    assert pipe.family == "sdxl" and type(pipe.pipe).__name__ == "StableDiffusionXLPipeline"
    base = CellParams(prompt="a star", steps=4, seed=3, loras=[LoraRef(str(d / "xl.safetensors"), 1.0, name="xl")],
                      controls=[ControlRef(str(d / "cn"), str(d / "control.png"), scale=1.0)])  # fmt: skip
    spec = GridSpec(base=base, rows=[Axis("control_scale", [0.0, 1.0])], cols=[Axis("weight", [0.0, 1.0], target="xl")])
    result = render_grid(spec, tmp_path / "xl", pipeline=pipe, progress=False)
    lay = result.layout
    assert Image.open(result.grid_path).size == (lay.label_width + 2 * 64, lay.label_height + 2 * 64)
    assert result.manifest["model"]["family"] == "sdxl"
    assert parse_parameters(result.cells[3]["parameters"])["loras"] == {"xl": 1.0}
    # scale 0 equals no ControlNet at all
    plain = render_grid(GridSpec(base=base.replace(controls=[]), cols=[Axis("weight", [0.0, 1.0], target="xl")]), tmp_path / "plain", pipeline=pipe, progress=False)
    assert np.array_equal(_img(result, 0), _img(plain, 0)) and np.array_equal(_img(result, 1), _img(plain, 1))
    assert np.abs(_img(result, 2) - _img(result, 0)).mean() > 1.0  # the net conditions
    assert np.abs(_img(result, 1) - _img(result, 0)).mean() > 1.0  # the LoRA acts
    assert result.cells[1]["metrics"]["base_distance"] > 0 and result.cells[0]["metrics"]["base_distance"] == 0.0


def test_sdxl_fused_equals_unfused_and_kohya_equals_diffusers(xl):
    pipe, d = xl
    cell = CellParams(prompt="a moon", steps=4, seed=5, width=64, height=64)
    pipe.reset()
    unfused = np.asarray(pipe.generate([cell.replace(loras=[LoraRef(str(d / "xl.safetensors"), 0.8)])], fuse=False)[0], np.int16)
    fused = np.asarray(pipe.generate([cell.replace(loras=[LoraRef(str(d / "xl.safetensors"), 0.8)])], fuse=True)[0], np.int16)
    kohya = np.asarray(pipe.generate([cell.replace(loras=[LoraRef(str(d / "xl_kohya.safetensors"), 0.8)])], fuse=True)[0], np.int16)
    base = np.asarray(pipe.generate([cell])[0], np.int16)
    assert np.abs(unfused - base).mean() > 1.0
    assert np.abs(fused - unfused).max() <= 1 and np.abs(kohya - fused).max() <= 1
    assert set(pipe.pipe.get_list_adapters()) == {"unet", "text_encoder"}
