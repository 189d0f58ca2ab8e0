"""The tiny world's model: architecture from config, edge conditioning, and the shipped trained weights.

The shipped folders are lora_kit/world/weights/tiny-world (StableDiffusionPipeline) and
tiny-world-controlnet (ControlNetModel), written by scripts/pretrain_tiny_base.py and
scripts/pretrain_tiny_controlnet.py; scripts/eval_tiny_world.py measures them at scale (docs/world.md).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lora_kit.world import model as wm
from lora_kit.world.assets import WEIGHTS_DIR
from lora_kit.world.score import labels_of, score_batch, score_image, segment, to_rgb_array
from lora_kit.world.shapes import Scene, caption, generate, render

BASE = WEIGHTS_DIR / "tiny-world"
CONTROLNET = WEIGHTS_DIR / "tiny-world-controlnet"
# Regression pins on the shipped weights (sampling is deterministic on CPU; measured values in the
# comments, the margin absorbs float differences between machines). The quality bar of the tiny world
# (>= 80% shape and colour) is measured by scripts/eval_tiny_world.py on 100 prompts, see docs/world.md;
# these 16 prompts are a smoke-sized sample of it, chance would be 0.25 (shape) and 0.125 (colour).
SHAPE_RATE_16 = 0.8125  # measured 0.9375 (15 of 16)
COLOR_RATE_16 = 0.875  # measured 1.0
BACKGROUND_RATE_16 = 0.875  # measured 1.0
CONTROL_IOU_4 = 0.85  # measured 0.966 (0.974, 0.942, 0.964, 0.986)


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1))


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    p = StableDiffusionPipeline.from_pretrained(BASE)  # no dtype: what a user types first
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def controlnet():
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(CONTROLNET)


# --- architecture and conditioning (no weights) -------------------------------------------------------


def test_untrained_unet_is_seeded_and_sized():
    a, b, c = wm.build_unet(0), wm.build_unet(0), wm.build_unet(1)
    assert torch.equal(a.conv_in.weight, b.conv_in.weight)
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)
    assert _n_params(a) == 5_676_164
    assert _n_params(wm.build_vae(0)) == 681_911


def test_controlnet_from_unet_matches_the_4x_latent_grid():
    unet = wm.build_unet(0)
    net = wm.controlnet_from_unet(unet)
    sample, cond = torch.randn(1, 4, 12, 20), torch.rand(1, 3, 48, 80)  # an 80x48 canvas
    with torch.no_grad():
        down, mid = net(sample, 10, encoder_hidden_states=torch.randn(1, 32, 64), controlnet_cond=cond, return_dict=False)
    assert down[0].shape == (1, 64, 12, 20) and mid.shape == (1, 128, 6, 10)
    assert all(float(r.abs().max()) == 0.0 for r in down)  # zero convolutions: a fresh ControlNet changes nothing


def test_scene_edges_outline_the_shape_whatever_the_colours():
    # orange on grey: 20 grey levels apart, invisible to a Canny on luminance, but the outline is there
    scene = Scene("square", "orange", "grey", size=30, center=(32, 32), width=64, height=64)
    edges = np.asarray(wm.scene_edges(scene))[..., 0] > 0
    assert edges.shape == (64, 64)
    ys, xs = np.nonzero(edges)
    assert 80 <= len(xs) <= 160  # one thin line around a 30 px square (perimeter 120)
    assert xs.min() >= 15 and xs.max() <= 48 and ys.min() >= 15 and ys.max() <= 48
    assert not edges[20:44, 20:44].any()  # nothing inside
    # for any picture of the world, image_edges gives the same lines from the scorer's segmentation
    same = np.asarray(wm.image_edges(render(scene)))[..., 0] > 0
    assert _iou(edges, same) > 0.9


# --- the shipped weights --------------------------------------------------------------------------------


def test_shipped_folders_are_fp16_safetensors_that_load_as_fp32(pipe, controlnet):
    from safetensors import safe_open

    for f in (BASE / "unet" / "diffusion_pytorch_model.safetensors", BASE / "text_encoder" / "model.safetensors", CONTROLNET / "diffusion_pytorch_model.safetensors"):
        with safe_open(str(f), "pt") as st:
            assert {st.get_slice(k).get_dtype() for k in st.keys()} == {"F16"}
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype, controlnet.dtype} == {torch.float32}
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    info = json.loads((BASE / "pretrain.json").read_text())
    assert pipe.vae.config.scaling_factor == pytest.approx(info["vae"]["scaling_factor"], rel=1e-6)
    # Shipped files name no local folder: the publisher's own leak scan, over this machine's roots and the
    # usual homes and work folders of the machines the weights were trained on.
    from lora_kit.publish.privacy import find_leaks, local_roots

    roots = local_roots("/tmp", "/home", "/root", "/work", "/Users")
    assert find_leaks(BASE, roots, []) == [] and find_leaks(CONTROLNET, roots, []) == []


def test_trigger_words_are_single_tokens(pipe):
    tok = pipe.tokenizer
    assert tok.model_max_length == wm.TOKEN_MAX_LENGTH == 32
    assert tok("ohwx zyk").input_ids == [49406, 47993, 39112, 49407]


def test_load_model_builtin_tiny_world():
    from lora_kit.models.loading import load_model

    bundle = load_model("builtin:tiny-world")
    assert bundle.family == "sd1" and bundle.prediction_type == "epsilon"
    assert type(bundle.noise_scheduler).__name__ == "DDPMScheduler"
    assert bundle.vae_scale_factor == 4 and bundle.unet.config.cross_attention_dim == 64
    assert bundle.text_encoders[0].dtype == torch.float32


def test_sampling_is_deterministic_and_draws_the_prompt(pipe):
    kw = dict(height=64, width=64, num_inference_steps=20, guidance_scale=5.0, output_type="np")
    prompt = "a red circle on a white background"
    a = pipe(prompt, generator=torch.Generator().manual_seed(4), **kw).images[0]
    b = pipe(prompt, generator=torch.Generator().manual_seed(4), **kw).images[0]
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)
    assert score_image(a).labels() == {"shape": "circle", "color": "red", "background": "white", "striped": False}


def test_base_draws_shape_and_colour_of_16_prompts_pinned(pipe):
    scenes = [s for _, _, s in generate(16, seed=2024, canvases=[(64, 64)])]
    images = pipe(
        [caption(s) for s in scenes], height=64, width=64, num_inference_steps=20, guidance_scale=5.0,
        generator=[torch.Generator().manual_seed(i) for i in range(16)], output_type="np",
    ).images
    rates = score_batch(list(images), [{k: labels_of(s)[k] for k in ("shape", "color", "background")} for s in scenes])
    assert rates["shape"] >= SHAPE_RATE_16 and rates["color"] >= COLOR_RATE_16 and rates["background"] >= BACKGROUND_RATE_16, rates


def test_controlnet_output_follows_the_edge_map(pipe, controlnet):
    from diffusers import StableDiffusionControlNetPipeline

    cpipe = StableDiffusionControlNetPipeline(**pipe.components, controlnet=controlnet)
    cpipe.set_progress_bar_config(disable=True)
    scenes = [s for _, _, s in generate(4, seed=77, canvases=[(64, 64)])]
    images = cpipe(
        [caption(s) for s in scenes], image=[wm.scene_edges(s) for s in scenes], height=64, width=64,
        num_inference_steps=20, guidance_scale=5.0,
        generator=[torch.Generator().manual_seed(i) for i in range(4)], output_type="np",
    ).images
    ious = [_iou(segment(to_rgb_array(im))[0], segment(to_rgb_array(render(s)))[0]) for im, s in zip(images, scenes)]
    assert np.mean(ious) >= CONTROL_IOU_4, ious

