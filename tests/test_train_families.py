"""SDXL and SD2-v training on tiny models: micro-conditioning per sample, export, metadata (issue 8)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from tests.train_utils import reset_accelerate, run_training


def test_sdxl_time_ids_are_each_samples_size_crop_and_target(tmp_path):
    from lora_kit.config.load import load_recipe
    from lora_kit.train.recipe import LoraTrainer
    from lora_kit.train.step import forward_loss

    reset_accelerate()
    r = load_recipe("tiny-smoke", [f'output_dir="{tmp_path}"', "model.pretrained=\"builtin:tiny-sdxl\"", "train.batch_size=2",
                                   "log.tensorboard=false", "dataset.flip_aug=true", "buckets.random_crop=true"])
    t = LoraTrainer(r)
    t.setup()
    seen = []
    unet = t.accelerator.unwrap_model(t.unet)
    hook = unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True)
    ds = t.data.data.dataset
    buckets = set()
    checked = 0
    for batch in t.data.batches(0):
        forward_loss(t.ctx, batch, 0)
        expected = []
        for i in batch["index"].tolist():
            sample = ds.samples[ds.index[i]]
            pl = sample.placement
            item = ds[i]  # the same epoch and index: the same flip and crop as in the batch
            top, left = item["crop_top_left"]
            assert (top, left) in {(pl.crop_top, pl.crop_left), (pl.crop_top, pl.flipped_crop_left())}
            expected.append([pl.original[1], pl.original[0], top, left, pl.bucket[1], pl.bucket[0]])
        torch.testing.assert_close(seen[-1], torch.tensor(expected, dtype=seen[-1].dtype))
        buckets.add(tuple(batch["target_size"][0].tolist()))
        checked += 1
        if checked >= 12 and len(buckets) >= 3:
            break
    hook.remove()
    t.cleanup()
    assert len(buckets) >= 3  # several aspect ratios went through the U-Net


def test_sdxl_export_loads_in_diffusers_and_equals_in_memory_adapter(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from lora_kit.models.loading import resolve_model

    t = run_training(tmp_path, ['model.pretrained="builtin:tiny-sdxl"', "network.rank=4", "network.alpha=2", "optimizer.lr=1e-2"])
    with safe_open(str(tmp_path / "tiny-smoke.safetensors"), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys) and not any("down_blocks" in k for k in keys)

    def render(pipe):
        g = torch.Generator().manual_seed(0)
        return pipe("ohwx star", num_inference_steps=3, height=64, width=64, generator=g, output_type="np").images[0]

    model = resolve_model("builtin:tiny-sdxl")
    mem = StableDiffusionXLPipeline.from_pretrained(model)
    base = render(mem)
    mem.unet = t.accelerator.unwrap_model(t.unet).eval().to(torch.float32)
    in_memory = render(mem)
    pipe = StableDiffusionXLPipeline.from_pretrained(model)
    pipe.load_lora_weights(str(tmp_path / "tiny-smoke.safetensors"))
    from_kohya = render(pipe)
    assert abs(in_memory - base).max() > 1e-3
    assert abs(from_kohya - in_memory).max() < 2e-3  # fp16 file vs fp32 weights


def test_sd2v_trains_with_v_prediction_and_says_so(tmp_path):
    t = run_training(tmp_path, ['model.pretrained="builtin:tiny-sd2v"', "loss.min_snr_gamma=5", "train.max_steps=2"])
    assert t.ctx.prediction_type == "v_prediction" and t.bundle.family == "sd2v"
    with safe_open(str(tmp_path / "tiny-smoke.safetensors"), "pt") as f:
        meta = f.metadata()
    assert (meta["ss_base_model_version"], meta["ss_v2"], meta["modelspec.prediction_type"]) == ("sd_v2_v", "True", "v")
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"


def test_zero_terminal_snr_rescales_the_schedule(tmp_path):
    t = run_training(tmp_path, ['model.pretrained="builtin:tiny-sd2v"', "model.zero_terminal_snr=true", "train.max_steps=1"])
    assert float(t.ctx.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-6)
