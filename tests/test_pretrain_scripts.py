"""The tiny world's pretraining scripts: the noise they train on, and a two-step U-Net run end to end.

The first shipped base was trained with the pipeline's DPMSolverMultistepScheduler.add_noise, which
(before set_timesteps) gives t=999 the *least* noisy input: the noise level ran backwards against the
timestep label. These tests pin the forward process the scripts use to diffusers' DDPMScheduler.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import pretrain_tiny_base as ptb  # noqa: E402

from lora_kit.world import model as wm  # noqa: E402
from lora_kit.world.assets import WEIGHTS_DIR  # noqa: E402


def test_noised_latents_is_ddpm_forward_process():
    ddpm = wm.training_scheduler()
    latents = torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noisy, noise, t = ptb.noised_latents(latents, ddpm.alphas_cumprod, torch.Generator().manual_seed(1))
    assert t.min() >= 0 and t.max() <= 999 and len(set(t.tolist())) > 32
    torch.testing.assert_close(noisy, ddpm.add_noise(latents, noise, t))
    # the noisiest quarter keeps < 30% of the signal (sqrt(alpha_bar) at t >= 750 is at most 0.28)
    high, low = t >= 750, t < 250
    assert high.any() and low.any()
    corr = lambda m: torch.nn.functional.cosine_similarity(noisy[m].flatten(1), latents[m].flatten(1)).mean()  # noqa: E731
    assert corr(high) < 0.35 and corr(low) > 0.9, (corr(high), corr(low))


def test_diffusion_loss_is_min_snr_weighted_epsilon_mse():
    ddpm = wm.training_scheduler()
    latents = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    class Echo(torch.nn.Module):  # predicts the noisy input itself: a known, non-zero error
        def forward(self, x, t, emb):
            return type("Out", (), {"sample": x})()

    loss = ptb.diffusion_loss(Echo(), lambda ids: (None,), ddpm.alphas_cumprod, latents, None, 5.0, torch.Generator().manual_seed(3))
    noisy, noise, t = ptb.noised_latents(latents, ddpm.alphas_cumprod, torch.Generator().manual_seed(3))
    a = ddpm.alphas_cumprod[t]
    snr = a / (1 - a)
    expected = (((noisy - noise) ** 2).mean(dim=(1, 2, 3)) * torch.clamp(snr, max=5.0) / snr).mean()
    torch.testing.assert_close(loss, expected)


def test_unet_stage_runs_two_steps_and_writes_a_loadable_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "tiny-world"
    shutil.copytree(WEIGHTS_DIR / "tiny-world", out)
    rc = ptb.main(["--stage", "unet", "--out", str(out), "--unet-steps", "2", "--images", "40", "--batch-size", "4", "--device", "cpu"])
    assert rc == 0
    info = json.loads((out / "pretrain.json").read_text())
    assert info["unet"]["steps"] == 2 and 0 < info["unet"]["final_loss"] < 5
    assert "vae_decoder" in info and "unet_before_resume" not in info  # a fresh stage 2 keeps the VAE record
    pipe = StableDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle on a white background", height=64, width=64, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_controlnet_script_runs_two_steps_on_the_shipped_base(tmp_path):
    import pretrain_tiny_controlnet as ptc
    from diffusers import ControlNetModel

    out = tmp_path / "cn"
    rc = ptc.main(["--base", str(WEIGHTS_DIR / "tiny-world"), "--out", str(out), "--steps", "2", "--images", "40",
                   "--batch-size", "4", "--device", "cpu"])
    assert rc == 0
    assert json.loads((out / "pretrain.json").read_text())["controlnet"]["steps"] == 2
    net = ControlNetModel.from_pretrained(out)
    assert net.config.conditioning_embedding_out_channels == list(wm.CONTROLNET_EMBEDDING_CHANNELS)
