"""Sample grids during training: right images for each adapter weight, and training left untouched."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from lora_kit.config.schema import SampleConfig
from lora_kit.train.sampling import render_training_samples
from lora_kit.models.presets import build_components

SAMPLE = SampleConfig(prompts=["a star", "a moon"], seeds=[1, 2], weights=[0.0, 0.5, 1.0], steps=3, cfg=5.0, sampler="euler_a")


def _training_components(name: str):
    """What the trainer hands over: modules with a peft adapter "default" (non-zero, with dropout)."""
    from peft import LoraConfig

    c = build_components(name, seed=0)
    c["unet"].add_adapter(LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in c["unet"].modules():
            if hasattr(m, "lora_B") and "default" in m.lora_B:
                m.lora_B["default"].weight.copy_(torch.randn(m.lora_B["default"].weight.shape, generator=g) * 0.3)
    c["unet"].train()
    tes = [c[k] for k in ("text_encoder", "text_encoder_2") if k in c]
    toks = [c[k] for k in ("tokenizer", "tokenizer_2") if k in c]
    for te in tes:
        te.eval()
    return {"unet": c["unet"], "vae": c["vae"], "scheduler": c["scheduler"], "text_encoders": tes, "tokenizers": toks}


def _reference(components, family, weight: float, prompt: str, seeds: list[int]) -> list[np.ndarray]:
    """The same images from a plain diffusers pipeline, the adapter scaled by hand (peft set_scale)."""
    from diffusers import EulerAncestralDiscreteScheduler

    from lora_kit.infer.pipeline import build_text2img

    unet = components["unet"]
    layers = [m for m in unet.modules() if isinstance(getattr(m, "scaling", None), dict) and "default" in m.scaling]
    saved = [m.scaling["default"] for m in layers]
    pipe = build_text2img(family, unet, components["vae"], EulerAncestralDiscreteScheduler.from_config(components["scheduler"].config),
                          components["text_encoders"], components["tokenizers"])  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    unet.eval()
    try:
        for m, s in zip(layers, saved):
            m.scaling["default"] = s * weight
        out = pipe([prompt] * len(seeds), negative_prompt=[""] * len(seeds), num_inference_steps=3, guidance_scale=5.0,
                   generator=[torch.Generator().manual_seed(s) for s in seeds], width=64, height=64).images  # fmt: skip
    finally:
        for m, s in zip(layers, saved):
            m.scaling["default"] = s
        unet.train()
    return [np.asarray(im, np.int16) for im in out]


@pytest.mark.parametrize("name,family", [("tiny-sd15", "sd1"), ("tiny-sdxl", "sdxl")])
def test_training_samples_grid_and_untouched_training_state(tmp_path, name, family):
    comps = _training_components(name)
    unet = comps["unet"]
    flags = {n: m.training for n, m in unet.named_modules()}
    te_flags = [te.training for te in comps["text_encoders"]]
    scalings = {n: dict(m.scaling) for n, m in unet.named_modules() if isinstance(getattr(m, "scaling", None), dict)}
    torch.manual_seed(123), random.seed(5), np.random.seed(7)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123), random.seed(5), np.random.seed(7)

    path, image = render_training_samples(comps, SAMPLE, 5, tmp_path / "samples", (64, 64), family)

    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]  # torch, python and numpy RNGs untouched
    assert {n: m.training for n, m in unet.named_modules()} == flags
    assert [te.training for te in comps["text_encoders"]] == te_flags
    assert {n: dict(m.scaling) for n, m in unet.named_modules() if isinstance(getattr(m, "scaling", None), dict)} == scalings
    assert path == tmp_path / "samples" / "step-000005" / "grid.png" and path.is_file()
    assert isinstance(image, Image.Image) and Image.open(path).size == image.size

    from lora_kit.infer.grid import load_manifest

    m = load_manifest(path.parent)
    lay = m["layout"]
    assert (lay["rows"], lay["cols"]) == (2, 6) and image.size == (lay["width"], lay["height"])
    assert m["cells"][0]["col_label"] == "default: 0, seed 1" and m["cells"][6]["row_label"] == "a moon"
    assert "<lora:default:0.5>" in m["cells"][2]["parameters"] and "Sampler: Euler a" in m["cells"][2]["parameters"]
    for k, weight in enumerate(SAMPLE.weights):
        cells = [m["cells"][2 * k + j] for j in range(2)]  # row "a star", both seeds
        got = [np.asarray(Image.open(path.parent / c["file"]).convert("RGB"), np.int16) for c in cells]
        want = _reference(comps, family, weight, "a star", [1, 2])
        for g, w in zip(got, want):
            assert np.abs(g - w).max() <= 1, (weight, np.abs(g - w).max())
    base, full = (np.asarray(Image.open(path.parent / m["cells"][i]["file"]), np.int16) for i in (0, 4))
    assert np.abs(base - full).mean() > 1.0  # the adapter has an effect, weight 0 is the base model
    assert m["cells"][4]["metrics"]["base_distance"] > 0 and m["cells"][0]["metrics"]["base_distance"] == 0.0


def test_sampling_does_not_change_what_training_computes_next():
    """Two identical 'training steps' with sampling in between draw the same noise as without it."""
    comps = _training_components("tiny-sd15")
    torch.manual_seed(0)
    a = torch.randn(4)
    b = torch.randn(4)
    torch.manual_seed(0)
    a2 = torch.randn(4)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        render_training_samples(comps, SampleConfig(prompts=["x"], seeds=[0], weights=[1.0], steps=2), 1, tmp, (64, 64), "sd1")
    b2 = torch.randn(4)
    assert torch.equal(a, a2) and torch.equal(b, b2)
