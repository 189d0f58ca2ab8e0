#!/usr/bin/env python
"""Seconds per grid cell: base model, 2 stacked LoRAs unfused, the same fused, and with a ControlNet.

    python scripts/bench_grid.py                       # tiny-sd15 on CPU (seconds)
    python scripts/bench_grid.py --model sd15 --size 512 --steps 20   # SD1.5-sized random-init model (GPU)

The SD1.5-sized model is built from SD1.5's configuration with random weights (no download): speed does
not depend on the weights. Modes are timed round-robin (base, unfused, fused, ...) and the median over
repeats is reported, so drift on a shared machine hits every mode alike. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def sd15_components(seed: int = 0) -> dict:
    """SD1.5's U-Net / VAE / CLIP-L text encoder configurations, random-init."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from lora_kit.models.tokenizer import write_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)  # fmt: skip
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)  # fmt: skip
    te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                      max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu"))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(Path(tmp)))
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, clip_sample=False)
    return {"unet": unet, "vae": vae, "scheduler": sched, "text_encoders": [te], "tokenizers": [tok]}


def build(args):
    import torch

    from lora_kit.infer.pipeline import LoraPipeline, resolve_device, resolve_dtype
    from lora_kit.models.presets import build_components

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.model == "sd15":
        comps = sd15_components()
    else:
        c = build_components("tiny-sd15", 0)
        comps = {"unet": c["unet"], "vae": c["vae"], "scheduler": c["scheduler"], "text_encoders": [c["text_encoder"]], "tokenizers": [c["tokenizer"]]}
    lp = LoraPipeline.from_components(comps, "sd1", name=args.model)
    lp.pipe.to(device)
    if dtype != torch.float32:
        lp.pipe.to(dtype=dtype)
    return lp, device, dtype, torch


def make_assets(lp, workdir: Path, rank: int) -> dict:
    from PIL import Image

    from lora_kit.infer.synthetic import random_controlnet, write_random_lora

    unet = lp.pipe.unet
    files = {n: str(write_random_lora(workdir / f"{n}.safetensors", unet, rank=rank, seed=i)) for i, n in enumerate(("style", "detail"))}
    net = random_controlnet(unet, lp.pipe.vae_scale_factor, seed=0).to(lp.device)  # same dtype as the U-Net
    lp.add_controlnet("bench-controlnet", net)
    Image.new("RGB", (64, 64), "white").save(workdir / "control.png")
    return {"loras": files, "control": str(workdir / "control.png")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "sd15"], default="tiny")
    p.add_argument("--size", type=int, default=0, help="pixels (default: 64 tiny, 512 sd15)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=1, help="images per pipeline call")
    p.add_argument("--calls", type=int, default=4, help="pipeline calls per mode and repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    args = p.parse_args()
    size = args.size or (512 if args.model == "sd15" else 64)

    from lora_kit.infer.spec import CellParams, ControlRef, LoraRef

    lp, device, dtype, torch = build(args)
    with tempfile.TemporaryDirectory() as tmp:
        a = make_assets(lp, Path(tmp), args.rank)
        loras = [LoraRef(a["loras"]["style"], 0.8), LoraRef(a["loras"]["detail"], 0.5)]
        net = [ControlRef("bench-controlnet", a["control"], scale=1.0)]
        base = CellParams(prompt="a photo of a red star", negative_prompt="blurry", steps=args.steps, width=size, height=size)
        modes = {
            "base": (base, True),
            "2 LoRAs, unfused": (base.replace(loras=loras), False),
            "2 LoRAs, fused": (base.replace(loras=loras), True),
            "ControlNet": (base.replace(controls=net), True),
            "ControlNet + 2 LoRAs fused": (base.replace(controls=net, loras=loras), True),
        }
        times: dict[str, list[float]] = {m: [] for m in modes}

        def run(mode: str) -> float:
            cell, fuse = modes[mode]
            lp.apply_loras(cell.loras, fuse=fuse)  # fusing is paid once per weight set, not per cell
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for k in range(args.calls):
                lp.generate([cell.replace(seed=k * args.batch + j) for j in range(args.batch)], fuse=fuse)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return (time.perf_counter() - t0) / (args.calls * args.batch)

        for mode in modes:  # warm-up (allocations, kernels, LoRA loading)
            lp.generate([modes[mode][0]], fuse=modes[mode][1])
        for r in range(args.repeats):
            for mode in modes:
                times[mode].append(run(mode))
                print(f"repeat {r + 1}/{args.repeats} {mode}: {times[mode][-1]:.4f} s/cell", file=sys.stderr, flush=True)
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{args.model} model, {size}x{size}, {args.steps} steps, batch {args.batch}, rank {args.rank}, {str(dtype).replace('torch.', '')}, {gpu}\n")
    print("| mode | s / cell (median) | min | vs base |")
    print("|---|---:|---:|---:|")
    ref = statistics.median(times["base"])
    for mode, ts in times.items():
        med = statistics.median(ts)
        print(f"| {mode} | {med:.4f} | {min(ts):.4f} | {100 * (med / ref - 1):+.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
