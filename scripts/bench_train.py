"""Training throughput and peak memory: lora-kit's trainer vs a bare reference loop.

The reference is the per-step work of diffusers' examples/text_to_image/train_text_to_image_lora.py:
VAE encode + text encode + U-Net forward/backward + 8-bit AdamW step, no caching, same model, same LoRA
(rank/targets), same batch and resolution. lora-kit runs its real `LoraTrainer` (latent and text caches on).
Each side runs in its own subprocess so peak memory is its own. Prints a markdown table and the ratio.

  python scripts/bench_train.py                          # tiny model, CPU
  python scripts/bench_train.py --sd15 --resolution 512  # random-init SD1.5-sized model (GPU)
  python scripts/bench_train.py --sdxl --resolution 1024 --batch 1   # SDXL-sized, lora-kit side (GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def sd15_sized_folder(out: Path) -> Path:
    """A random-init pipeline with SD1.5's architecture (U-Net 860M, VAE 8x, CLIP ViT-L text encoder)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lora_kit.models.tokenizer import write_clip_tokenizer

    if (out / "model_index.json").exists():
        return out
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                      max_position_embeddings=77, vocab_size=49408, projection_dim=768))
    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(out / "_tok"))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
    StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(out)
    return out


def sdxl_sized_folder(out: Path) -> Path:
    """A random-init pipeline with SDXL base's architecture (U-Net 2.6B, two CLIP text encoders, 8x VAE)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from lora_kit.models.tokenizer import write_clip_tokenizer

    if (out / "model_index.json").exists():
        return out
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(5, 10, 20),
        use_linear_projection=True, cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=1024, force_upcast=True)
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                       max_position_embeddings=77, vocab_size=49408, projection_dim=768))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                                     num_attention_heads=20, max_position_embeddings=77, vocab_size=49408,
                                                     projection_dim=1280, hidden_act="gelu"))
    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(out / "_tok"))
    tok2 = CLIPTokenizer.from_pretrained(write_clip_tokenizer(out / "_tok2", pad_token="!"))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
    StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2, unet=unet,
                              scheduler=sched).save_pretrained(out)
    return out


def peak_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, warmup: int, steps: int, device) -> float:
    """Seconds per call of `step(k)` over `steps` calls after `warmup` untimed ones (device synced at both ends)."""
    for k in range(warmup):
        step(k)
    sync(device)
    t0 = time.perf_counter()
    for k in range(warmup, warmup + steps):
        step(k)
    sync(device)
    return (time.perf_counter() - t0) / steps


def reference_step_fn(model: str, res: int, batch: int):
    """diffusers' train_text_to_image_lora.py step, stripped of its argparse and logging: returns
    (step function, device)."""
    import bitsandbytes as bnb
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    from lora_kit.models.loading import resolve_model

    path = resolve_model(model)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet").to(dev, dtype)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae").to(dev, dtype)
    te = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").to(dev, dtype)
    tok = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    sched = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    for m in (unet, vae, te):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    cast_training_params(unet, dtype=torch.float32)
    if dev.type == "cuda":
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = bnb.optim.AdamW8bit(params, lr=1e-4)
    pixels = torch.randn(batch, 3, res, res, device=dev, dtype=dtype).clamp(-1, 1)
    ids = tok(["a red circle on a white background"] * batch, padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt").input_ids.to(dev)

    def step(_k: int = 0) -> None:
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        ts = torch.randint(0, 1000, (batch,), device=dev).long()
        noisy = sched.add_noise(latents, noise, ts)
        enc = te(ids, return_dict=False)[0]
        with torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda"):
            pred = unet(noisy, ts, enc, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()

    step.trainable_parameters = sum(p.numel() for p in params)  # for the fairness check in the tests
    return step, dev


def reference(model: str, res: int, batch: int, steps: int, warmup: int) -> dict:
    import torch

    step, dev = reference_step_fn(model, res, batch)
    dt = time_steps(step, warmup, steps, dev)
    return {"images_per_s": batch / dt, "peak_mb": peak_mb(dev), "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"}


def lora_kit_trainer(model: str, res: int, batch: int, max_steps: int, out: str):
    """lora-kit's real LoraTrainer, set up (caches built) on the shipped star set at `res`."""
    import torch

    from lora_kit.config.load import load_recipe
    from lora_kit.train.recipe import LoraTrainer

    gpu = torch.cuda.is_available()
    r = load_recipe("tiny-smoke", [
        f'model.pretrained="{model}"', f'output_dir="{out}"', f"buckets.resolution={res}", f"buckets.bucket_reso_steps={max(8, res // 8)}",
        f"buckets.min_bucket_reso={res // 2}", f"buckets.max_bucket_reso={res * 2}", f"train.batch_size={batch}",
        f"train.max_steps={max_steps}", "network.rank=16", "network.alpha=16", "save.every_n_steps=0",
        "log.tensorboard=false", "dataset.caption_dropout=0.0", f'train.mixed_precision="{"bf16" if gpu else "no"}"',
        f"train.gradient_checkpointing={'true' if gpu else 'false'}",
    ])
    t = LoraTrainer(r)
    t.setup()
    return t


def lora_kit_step(t, batch: dict, step: int, mark=None) -> None:
    """The loop body of LoraTrainer.train without logging: forward, backward, clip, optimizer step.
    `mark(phase)`, if given, is called as each phase ends (profile_train.py times them)."""
    from lora_kit.train.step import forward_loss

    mark = mark or (lambda phase: None)
    acc = t.accelerator
    with acc.accumulate(t.unet):
        loss, _ = forward_loss(t.ctx, batch, step)
        mark("forward")
        acc.backward(loss)
        mark("backward")
        acc.clip_grad_norm_(t._trained_params(), 1.0)
        t.optimizer.step()
        t.optimizer.zero_grad()
        mark("optimizer")


def lora_kit_run(model: str, res: int, batch: int, steps: int, warmup: int, out: str) -> dict:
    import torch

    gpu = torch.cuda.is_available()
    t = lora_kit_trainer(model, res, batch, warmup + steps, out)
    acc = t.accelerator
    # Setup builds the latent and text caches (the VAE encodes at full resolution): its peak is reported
    # apart, and the training peak is measured from here on, which is what a long run holds.
    setup_peak = peak_mb(acc.device)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    batches = t.data.batches(0)  # the real iterator: loading batches from the cache is part of every step
    dt = time_steps(lambda k: lora_kit_step(t, next(batches), k), warmup, steps, acc.device)
    return {"images_per_s": batch / dt, "peak_mb": peak_mb(acc.device), "setup_peak_mb": setup_peak,
            "device": torch.cuda.get_device_name() if gpu else "cpu", "offloaded": len(t.offloaded)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:tiny-sd15")
    ap.add_argument("--sd15", action="store_true", help="random-init SD1.5-sized model (written to a temp folder)")
    ap.add_argument("--sdxl", action="store_true", help="random-init SDXL-sized model; lora-kit side only (the reference loop is SD1's)")
    ap.add_argument("--only", choices=["reference", "lora-kit"], help="run one side only")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--_side", choices=["reference", "lora-kit"], help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._side:
        fn = reference if a._side == "reference" else lambda *x: lora_kit_run(*x, out=a._out)
        print("RESULT " + json.dumps(fn(a.model, a.resolution, a.batch, a.steps, a.warmup)))
        return
    model = a.model
    tmp = tempfile.mkdtemp(prefix="bench-train-")
    if a.sd15:
        model = str(sd15_sized_folder(Path(tmp) / "sd15-random"))
    if a.sdxl:
        model, a.only = str(sdxl_sized_folder(Path(tmp) / "sdxl-random")), "lora-kit"
    results = {}
    for side in ((a.only,) if a.only else ("reference", "lora-kit")):
        cmd = [sys.executable, __file__, "--_side", side, "--_out", str(Path(tmp) / "run"), "--model", model,
               "--resolution", str(a.resolution), "--batch", str(a.batch), "--steps", str(a.steps), "--warmup", str(a.warmup)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        line = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
        if res.returncode or not line:
            sys.exit(f"{side} failed:\n{res.stderr[-3000:]}")
        results[side] = json.loads(line[0][7:])
    name = "random-init SD1.5-sized" if a.sd15 else "random-init SDXL-sized" if a.sdxl else model
    if len(results) == 1:
        (side, r), = results.items()
        print(f"\n{name}, {a.resolution} px, batch {a.batch}, {a.steps} timed steps on {r['device']}: "
              f"{side} {r['images_per_s']:.2f} images/s, peak {r['peak_mb']:.0f} MiB"
              + (f" (setup incl. caching: {r['setup_peak_mb']:.0f} MiB)" if "setup_peak_mb" in r else "")
              + (f"; {r['offloaded']} frozen modules kept off the GPU" if r.get("offloaded") and r["device"] != "cpu" else ""))
        print("RESULTS " + json.dumps(results))
        return
    ref, ours = results["reference"], results["lora-kit"]
    print(f"\n{name}, {a.resolution} px, batch {a.batch}, {a.steps} timed steps on {ours['device']}\n")
    print("| loop | images/s | peak memory (MiB) |\n|---|---|---|")
    print(f"| reference (diffusers train_text_to_image_lora step) | {ref['images_per_s']:.1f} | {ref['peak_mb']:.0f} |")
    print(f"| lora-kit LoraTrainer (latent + text cache) | {ours['images_per_s']:.1f} | {ours['peak_mb']:.0f} |")
    print(f"| ratio lora-kit / reference | {ours['images_per_s'] / ref['images_per_s']:.2f}x | {ours['peak_mb'] / ref['peak_mb']:.2f}x |")
    print(f"\nlora-kit setup peak (incl. building the caches): {ours['setup_peak_mb']:.0f} MiB")
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main()
