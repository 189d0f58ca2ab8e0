"""Training throughput, peak memory and MFU: lora-kit's step against the floor, a bare loop and the reference.

Loops (each measured in its own subprocess, so its peak memory is its own; every batch size of a loop in one
process, the model loaded once):
- floor:     the frozen base U-Net alone, forward + backward (to the input), eager, no LoRA, no optimizer;
- bare:      a hand-written loop doing lora-kit's math on cached latents: same LoRA (rank 16 on
             to_q/k/v/out.0), same noise/loss, same optimizer (AdamW8bit), no accelerate, no data pipeline;
- reference: the step of diffusers' examples/text_to_image/train_text_to_image_lora.py (VAE + CLIP every
             step, AdamW8bit);
- default:   lora-kit's LoraTrainer with the recipe defaults (latent + text cache, AdamW8bit,
             gradient_checkpointing "auto"), its real `step` on its real batches;
- fast:      lora-kit with train.compile = "regional" and torch's fused AdamW.
GPU runs use bf16 (mixed precision); CPU runs fp32. MFU = achieved FLOP/s over the card's dense bf16 peak,
FLOPs counted once per batch size with torch.utils.flop_counter.FlopCounterMode on a lora-kit step.

  python scripts/bench_train.py                                    # tiny model, CPU, every loop
  python scripts/bench_train.py --sd15 --resolution 512 --batches 16,32
  python scripts/bench_train.py --sdxl --resolution 1024 --batches 1 --loops default --set train.gradient_checkpointing=true
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

LOOPS = ("floor", "bare", "reference", "default", "fast")
FAST = ['train.compile="regional"', 'optimizer.name="adamw"']
# Dense bf16 tensor-core peaks (FLOP/s) by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "4090": 165e12}
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


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


def bench_dataset(out: Path, count: int, res: int) -> Path:
    """`count` noise pictures of res x res in one kohya folder: every batch comes from one bucket."""
    import numpy as np
    from PIL import Image

    folder = out / f"bench-{res}-{count}" / "1_noise"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
            (folder / f"{i:03d}.txt").write_text("a red circle on a white background")
    return folder.parent


# ---------------------------------------------------------------------------------------------- measuring


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


def count_ops(step) -> int:
    """aten ops dispatched by one step (a TorchDispatchMode sees every op, CPU or GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    if hasattr(step, "run"):  # lora-kit: the batch is read outside the trace (the bare loop has it in memory)
        batch = step.fetch()
        with Count():
            step.run(batch)
    else:
        with Count():
            step(0)
    return Count.n


def count_flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step(0)
    return fc.get_total_flops()


def measure(step, batch: int, warmup: int, steps: int, device) -> dict:
    """images/s, ms/step, peak MiB, and the warm-up's extra seconds (compilation) of one loop at one batch."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for k in range(warmup):
        step(k)
    sync(device)
    warm = time.perf_counter() - t0
    dt = time_steps(step, 0, steps, device)
    return {"batch": batch, "images_per_s": batch / dt, "ms_per_step": dt * 1000, "peak_mb": peak_mb(device),
            "warmup_extra_s": max(0.0, warm - warmup * dt)}


# ---------------------------------------------------------------------------------------------- loops


def _device_and_dtype():
    import torch

    gpu = torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu"), (torch.bfloat16 if gpu else torch.float32)


def _unet(model: str, device, dtype):
    from diffusers import UNet2DConditionModel

    from lora_kit.models.loading import resolve_model

    unet = UNet2DConditionModel.from_pretrained(resolve_model(model), subfolder="unet").to(device, dtype)
    return unet.requires_grad_(False)


def _latent_inputs(unet, batch: int, res: int, device, dtype):
    """Random cached-latent-like inputs for the U-Net at `res` pixels (VAE factor 8, tiny presets 4)."""
    import torch

    from lora_kit.train.memory import _probe_inputs

    factor = 8 if unet.config.sample_size >= 32 else 4
    (x, _t), kw = _probe_inputs(unet, (res // factor, res // factor), device, dtype)
    expand = lambda v: v.expand(batch, *v.shape[1:]).contiguous()  # noqa: E731
    kw = {k: expand(v) if torch.is_tensor(v) else {n: expand(w) for n, w in v.items()} for k, v in kw.items()}
    return expand(x), kw


def floor_loop(model: str, res: int, batches: list[int]):
    """The frozen base, forward + backward to its input: the work any LoRA step has to do at least."""
    import torch

    dev, dtype = _device_and_dtype()
    unet = _unet(model, dev, dtype)
    unet.train()

    def make(batch: int):
        x, kw = _latent_inputs(unet, batch, res, dev, dtype)
        t = torch.full((batch,), 500, device=dev)

        def step(_k=0):
            inp = x.detach().requires_grad_(True)
            unet(inp, t, **kw).sample.float().square().mean().backward()

        return step

    return dev, make, 0


def bare_loop(model: str, res: int, batches: list[int]):
    """lora-kit's math written out by hand: cached latents, the same LoRA, noise, loss and optimizer."""
    import bitsandbytes as bnb
    import torch
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from lora_kit.models.loading import resolve_model
    from lora_kit.train.loss import add_noise, diffusion_loss

    dev, dtype = _device_and_dtype()
    unet = _unet(model, dev, dtype)
    unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    cast_training_params(unet, dtype=torch.float32)
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = bnb.optim.AdamW8bit(params, lr=1e-4, weight_decay=1e-2)
    ac = DDPMScheduler.from_pretrained(resolve_model(model), subfolder="scheduler").alphas_cumprod.to(dev)

    def make(batch: int):
        latents, kw = _latent_inputs(unet, batch, res, dev, dtype)

        def step(_k=0):
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (batch,), device=dev)
            with torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda"):
                pred = unet(add_noise(latents, noise, t, ac), t, **kw).sample
            diffusion_loss(pred, noise, t, ac).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    return dev, make, sum(p.numel() for p in params)


def reference_parts(model: str) -> dict:
    """The modules of diffusers' train_text_to_image_lora.py: U-Net with the LoRA, VAE, CLIP, optimizer."""
    import bitsandbytes as bnb
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    from lora_kit.models.loading import resolve_model

    path = resolve_model(model)
    dev, dtype = _device_and_dtype()
    unet = _unet(model, dev, dtype)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae").to(dev, dtype).requires_grad_(False)
    te = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").to(dev, dtype).requires_grad_(False)
    unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    cast_training_params(unet, dtype=torch.float32)
    params = [p for p in unet.parameters() if p.requires_grad]
    return {"unet": unet, "vae": vae, "te": te, "tok": CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
            "sched": DDPMScheduler.from_pretrained(path, subfolder="scheduler"), "params": params,
            "opt": bnb.optim.AdamW8bit(params, lr=1e-4), "dev": dev, "dtype": dtype}


def reference_step(parts: dict, res: int, batch: int):
    """One step of the reference at `batch` images of `res` pixels: VAE and CLIP run every step."""
    import torch

    unet, vae, te, tok, sched, opt, dev, dtype = (parts[k] for k in ("unet", "vae", "te", "tok", "sched", "opt", "dev", "dtype"))
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
        torch.nn.utils.clip_grad_norm_(parts["params"], 1.0)
        opt.step()
        opt.zero_grad()

    step.trainable_parameters = sum(p.numel() for p in parts["params"])  # for the fairness check in the tests
    return step


def reference_step_fn(model: str, res: int, batch: int):
    """(step, device) of the reference at one batch size (scripts/profile_train.py)."""
    parts = reference_parts(model)
    return reference_step(parts, res, batch), parts["dev"]


def reference_loop(model: str, res: int, batches: list[int]):
    parts = reference_parts(model)
    return parts["dev"], lambda batch: reference_step(parts, res, batch), sum(p.numel() for p in parts["params"])


def lora_kit_trainer(model: str, res: int, batch: int, max_steps: int, out: str, extra=(), data: str | None = None):
    """lora-kit's real LoraTrainer, set up (caches built), with its recipe defaults for the LoRA (rank 16 on
    to_q/k/v/out.0, AdamW8bit) at `res` on `data` (default: the shipped star set)."""
    import torch

    gpu = torch.cuda.is_available()
    return recipe_trainer("tiny-smoke", [
        f'model.pretrained="{model}"', f"buckets.resolution={res}", f"buckets.bucket_reso_steps={max(8, res // 8)}",
        f"buckets.min_bucket_reso={res // 2}", f"buckets.max_bucket_reso={res * 2}", f"train.batch_size={batch}",
        f"train.max_steps={max_steps}", "network.rank=16", "network.alpha=16",
        "dataset.caption_dropout=0.0", f'train.mixed_precision="{"bf16" if gpu else "no"}"',
        'train.gradient_checkpointing="auto"', *([f'dataset.path="{data}"'] if data else []), *extra,
    ], out)


def recipe_trainer(recipe: str, overrides, out: str):
    """lora-kit's real LoraTrainer for a recipe (a shipped name or a file) with `overrides`, set up, writing
    to `out` and nothing worth keeping (no checkpoints, no TensorBoard logs)."""
    # Imported here: each loop runs in its own process, and only lora-kit's loops need the trainer.
    from lora_kit.config.load import load_recipe
    from lora_kit.train.recipe import LoraTrainer

    r = load_recipe(recipe, [f'output_dir="{out}"', "save.every_n_steps=0", "log.tensorboard=false", *overrides])
    t = LoraTrainer(r)
    t.setup()
    return t


def endless_batches(t):
    """The trainer's real batch iterator (cache reads included), epoch after epoch."""
    epoch = 0
    while True:
        yield from t.data.batches(epoch)
        epoch += 1


def take(batch: dict, n: int) -> dict:
    """The first `n` samples of a collated batch."""
    return {k: v[:n] for k, v in batch.items()}


def lora_kit_loop(model: str, res: int, batches: list[int], extra=(), workdir: str = ""):
    top = max(batches)
    data = bench_dataset(Path(workdir), max(2 * top, 8), res)
    t = lora_kit_trainer(model, res, top, 10**6, str(Path(workdir) / "run"), extra, str(data))
    it = endless_batches(t)

    def make(batch: int):
        def fetch() -> dict:
            b = next(it)
            while len(b["index"]) < top:  # a bucket's last, short batch
                b = next(it)
            return take(b, batch) if batch < top else b

        def step(_k=0):
            t.step(fetch())  # the timed step includes reading the batch from the cache

        step.fetch, step.run = fetch, t.step  # count_ops traces the step alone, like the bare loop's
        return step

    return t.accelerator.device, make, sum(p.numel() for p in t._trained_params())


def lora_kit_step(t, batch: dict, step: int, mark=None) -> None:
    """LoraTrainer.step at global step `step` (scripts/profile_train.py)."""
    t.global_step = step
    t.step(batch, mark)


# ---------------------------------------------------------------------------------------------- driver


def run_loop(loop: str, model: str, res: int, batches: list[int], steps: int, warmup: int, workdir: str, extra) -> None:
    """One loop at every batch size, in this process; prints a RESULT line per batch as it finishes."""
    import torch

    builders = {"floor": floor_loop, "bare": bare_loop, "reference": reference_loop,
                "default": lambda *a: lora_kit_loop(*a, extra=extra, workdir=workdir),
                "fast": lambda *a: lora_kit_loop(*a, extra=[*FAST, *extra], workdir=workdir)}
    dev, make, params = builders[loop](model, res, batches)
    for batch in batches:
        try:
            step = make(batch)
            row = measure(step, batch, warmup, steps, dev)
            if loop == "default":
                row["flops"] = count_flops(step)
            if dev.type == "cpu" and loop in ("bare", "default"):
                row["ops"] = count_ops(step)
        except torch.OutOfMemoryError:
            row = {"batch": batch, "oom": True}
            torch.cuda.empty_cache()
        row.update(loop=loop, trainable=params, device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu")
        print("RESULT " + json.dumps(row), flush=True)


def spawn(loop: str, a, model: str, workdir: str) -> list[dict]:
    cmd = [sys.executable, __file__, "--_loop", loop, "--_workdir", workdir, "--model", model, "--resolution", str(a.resolution),
           "--batches", a.batches, "--steps", str(a.steps), "--warmup", str(a.warmup), *sum((["--set", x] for x in a.set), [])]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=a.timeout)
    except subprocess.TimeoutExpired as exc:
        out, err = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), "timed out"
    else:
        out, err = res.stdout, (res.stderr[-3000:] if res.returncode else "")
    rows = [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    if err:
        print(f"{loop}: {err}", file=sys.stderr)
    return rows


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


def table(rows: list[dict], name: str) -> str:
    """One markdown table: each loop at each batch, its ratio to the floor at that batch, and MFU."""
    floor = {r["batch"]: r["images_per_s"] for r in rows if r["loop"] == "floor" and not r.get("oom")}
    flops = {r["batch"]: r["flops"] / r["batch"] for r in rows if r.get("flops")}
    lines = [f"{name}", "", "| loop | batch | images/s | ms/step | peak GiB | vs floor | MFU | compile s | aten ops |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("oom"):
            lines.append(f"| {r['loop']} | {r['batch']} | OOM | | | | | | |")
            continue
        peak = peak_flops(r["device"])
        mfu = f"{r['images_per_s'] * flops[r['batch']] / peak:.1%}" if peak and r["batch"] in flops else "n/a"
        vs = f"{r['images_per_s'] / floor[r['batch']]:.2f}x" if r["batch"] in floor else ""
        lines.append(f"| {r['loop']} | {r['batch']} | {r['images_per_s']:.2f} | {r['ms_per_step']:.1f} | {r['peak_mb'] / 1024:.2f} | "
                     f"{vs} | {mfu} | {r['warmup_extra_s']:.0f} | {r.get('ops', '')} |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> dict:
    """The issue's targets as ratios at each batch: fast/floor, fast/reference, default/floor, default/bare."""
    ips = {(r["loop"], r["batch"]): r["images_per_s"] for r in rows if not r.get("oom")}
    ops = {(r["loop"], r["batch"]): r["ops"] for r in rows if r.get("ops")}
    out = {}
    for (loop, b), v in ips.items():
        for num, den in (("fast", "floor"), ("fast", "reference"), ("default", "floor"), ("default", "bare")):
            if loop == num and (den, b) in ips:
                out[f"{num}/{den} images/s @{b}"] = round(v / ips[(den, b)], 3)
    for (loop, b), n in ops.items():
        if loop == "default" and ("bare", b) in ops:
            out[f"default/bare aten ops @{b}"] = round(n / ops[("bare", b)], 3)
            out[f"default/bare step time @{b}"] = round(ips[("bare", b)] / ips[("default", b)], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:tiny-sd15")
    ap.add_argument("--sd15", action="store_true", help="random-init SD1.5-sized model (written to the work folder)")
    ap.add_argument("--sdxl", action="store_true", help="random-init SDXL-sized model")
    ap.add_argument("--loops", default=",".join(LOOPS), help=f"comma-separated, of {', '.join(LOOPS)}")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batches", default="4", help="comma-separated batch sizes, e.g. 16,32")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="recipe override for the lora-kit loops (repeatable)")
    ap.add_argument("--workdir", help="folder for models, data and runs (reused by a second call)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per loop process")
    ap.add_argument("--_loop", help=argparse.SUPPRESS)
    ap.add_argument("--_workdir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    if a._loop:
        return run_loop(a._loop, a.model, a.resolution, batches, a.steps, a.warmup, a._workdir, a.set)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-train-"))
    t0 = time.perf_counter()
    model = str(sd15_sized_folder(work / "sd15-random")) if a.sd15 else str(sdxl_sized_folder(work / "sdxl-random")) if a.sdxl else a.model
    print(f"model ready in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for loop in a.loops.split(","):
        got = spawn(loop, a, model, str(work / loop))
        rows += got
        print(f"{loop}: " + ", ".join(f"batch {r['batch']} " + ("OOM" if r.get("oom") else f"{r['images_per_s']:.2f} img/s") for r in got), flush=True)
    name = "random-init SD1.5-sized" if a.sd15 else "random-init SDXL-sized" if a.sdxl else a.model
    print("\n" + table(rows, f"{name}, {a.resolution} px, {a.steps} timed steps after {a.warmup} warm-up"
                         + (f", lora-kit overrides {' '.join(a.set)}" if a.set else "")))
    print("\nRATIOS " + json.dumps(ratios(rows)))
    print("RESULTS " + json.dumps(rows))


if __name__ == "__main__":
    main()
