#!/usr/bin/env python
"""Train the tiny world's ControlNet: Canny outlines of the shape -> pictures with that layout.

    python scripts/pretrain_tiny_controlnet.py --base lora_kit/world/weights/tiny-world \
        --out lora_kit/world/weights/tiny-world-controlnet --overwrite --steps 1000 --minutes 12

The ControlNet starts as a copy of the base U-Net's encoder (`ControlNetModel.from_unet`, zero-initialised
output convolutions), and trains on the base's own objective with base U-Net, VAE and text encoder frozen.
Conditioning = `lora_kit.world.model.scene_edges(scene)`: the Canny outline of the scene's silhouette,
white on black at the picture's size (all canvas sizes of the world, batches grouped by size). Half of
the prompts are dropped to the empty prompt, as in the ControlNet paper, so the outline alone conveys
the layout. Latents and prompt embeddings are computed once (everything but the ControlNet is frozen).

Reproducible from `--seed`; constant learning rate after a warm-up, so a run cut by `--minutes` after k
steps equals `--steps k` (recorded in pretrain.json). Weights are saved in fp16 safetensors every
`--save-minutes` and at the end.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pretrain_tiny_base import (  # noqa: E402  (the shared data/saving helpers of the base script)
    BucketSampler,
    caption_ids,
    encode_buckets,
    half_copy,
    load_fp32,
    noised_latents,
    pick_device,
    replace_dir,
    world_buckets,
)

from lora_kit.train import loss as loss_fns  # noqa: E402
from lora_kit.world import model as world_model  # noqa: E402


def edge_tensors(data: dict) -> dict:
    """Per bucket: the conditioning images (float in [0, 1], N x 3 x H x W), as the pipeline feeds them."""
    out = {}
    for key, b in tqdm(data.items(), desc="edge maps", leave=False):
        edges = [np.asarray(world_model.scene_edges(s)) for s in b["scenes"]]
        out[key] = torch.from_numpy(np.stack(edges)).permute(0, 3, 1, 2).contiguous()
    return out


@torch.no_grad()
def prompt_embeddings(text_encoder, tokenizer, data: dict, device) -> tuple[dict, torch.Tensor]:
    """Per bucket (N x T x C) embeddings of the captions, and the empty prompt's (T x C)."""
    out = {}
    for key, b in data.items():
        out[key] = torch.cat([text_encoder(caption_ids(tokenizer, b["captions"][i : i + 256]).to(device))[0] for i in range(0, len(b["captions"]), 256)]).cpu()
    empty = text_encoder(caption_ids(tokenizer, [""]).to(device))[0][0].cpu()
    return out, empty


def control_loss(controlnet, unet, alphas_cumprod, latents, embeds, cond, gamma: float, generator):
    noisy, noise, t = noised_latents(latents, alphas_cumprod, generator)
    down, mid = controlnet(noisy, t, encoder_hidden_states=embeds, controlnet_cond=cond, return_dict=False)
    pred = unet(noisy, t, embeds, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    return loss_fns.diffusion_loss(pred, noise, t, alphas_cumprod, min_snr_gamma=gamma)


def load_base(base: Path, device) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    parts = {
        "vae": load_fp32(AutoencoderKL, base, "vae", device),
        "unet": load_fp32(UNet2DConditionModel, base, "unet", device),
        "text_encoder": load_fp32(CLIPTextModel, base, "text_encoder", device),
        "tokenizer": CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
    }
    for name in ("vae", "unet", "text_encoder"):
        parts[name].eval().requires_grad_(False)
    return parts


def prepare(args, base: dict, device) -> dict:
    data = world_buckets(args.images, args.seed + 500)
    embeds, empty = prompt_embeddings(base["text_encoder"], base["tokenizer"], data, device)
    return {"latents": encode_buckets(base["vae"], data, device), "embeds": embeds, "empty": empty, "edges": edge_tensors(data)}


def save(controlnet, out: Path, info: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        half_copy(controlnet).save_pretrained(tmp, safe_serialization=True)
        (tmp / "pretrain.json").write_text(json.dumps(info, indent=2) + "\n")
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def train(args, device) -> dict:
    torch.manual_seed(args.seed)
    base = load_base(Path(args.base), device)
    d = prepare(args, base, device)
    controlnet = world_model.controlnet_from_unet(base["unet"]).to(device).train()
    alphas_cumprod = world_model.training_scheduler().alphas_cumprod.to(device)
    opt = torch.optim.AdamW(controlnet.parameters(), lr=args.lr, weight_decay=1e-2)
    sampler = BucketSampler({k: len(v) for k, v in d["latents"].items()}, args.batch_size, args.seed + 600)
    gen = torch.Generator().manual_seed(args.seed + 700)  # CPU: lora_kit.train.loss draws on the CPU
    drop_rng = np.random.default_rng(args.seed + 800)
    start, last_save, losses, step = time.time(), time.time(), [], 0
    bar = tqdm(total=args.steps, desc="ControlNet")
    while step < args.steps and time.time() - start < args.minutes * 60:
        key, idx = sampler.next()
        embeds = d["embeds"][key][idx].clone()
        embeds[drop_rng.random(len(idx)) < args.prompt_dropout] = d["empty"]
        cond = d["edges"][key][idx].float().div(255).to(device)
        loss = control_loss(controlnet, base["unet"], alphas_cumprod, d["latents"][key][idx].to(device), embeds.to(device), cond, args.min_snr_gamma, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        opt.step()
        losses.append(loss.item())
        step += 1
        bar.update(1)
        if step % 50 == 0:
            tqdm.write(f"controlnet step {step} {time.time() - start:.0f}s loss {np.mean(losses[-100:]):.4f}")
        if time.time() - last_save > args.save_minutes * 60 or step == args.steps:
            stats = {"steps": step, "minutes": (time.time() - start) / 60, "final_loss": float(np.mean(losses[-100:]))}
            save(controlnet, Path(args.out), dict(args.info, controlnet=stats))
            last_save = time.time()
    bar.close()
    stats = {"steps": step, "minutes": (time.time() - start) / 60, "final_loss": float(np.mean(losses[-100:])) if losses else math.nan}
    save(controlnet, Path(args.out), dict(args.info, controlnet=stats))
    return stats


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="lora_kit/world/weights/tiny-world", help="the trained base pipeline folder")
    p.add_argument("--out", default="lora_kit/world/weights/tiny-world-controlnet")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (see pretrain_tiny_base.py)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--minutes", type=float, default=12.0, help="wall-clock cap")
    p.add_argument("--save-minutes", type=float, default=4.0)
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--prompt-dropout", type=float, default=0.5)
    p.add_argument("--min-snr-gamma", type=float, default=5.0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if (out / "config.json").exists() and not args.overwrite:
        sys.exit(f"{out} exists; pass --overwrite to replace it")
    device = pick_device(args.device)
    args.info = {"seed": args.seed, "device": device.type, "torch": torch.__version__,
                 "args": {k: v for k, v in vars(args).items() if k not in ("out", "base", "info")}}
    print(f"ControlNet: {json.dumps(train(args, device))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
