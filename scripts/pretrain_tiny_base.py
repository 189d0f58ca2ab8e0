#!/usr/bin/env python
"""Pretrain the tiny base model of the shapes world: the VAE, U-Net + text encoder, then the VAE decoder.

    python scripts/pretrain_tiny_base.py --out lora_kit/world/weights/tiny-world --overwrite \
        --vae-steps 600 --unet-steps 3000 --unet-minutes 40

Data: `lora_kit.world.shapes.generate(n, seed)`, every canvas size of the world. Batches are grouped by
canvas size (aspect-ratio buckets, like the trainer's), so the model learns 64x64, 80x48, 48x80, 72x56
and 56x72 pictures (latents 16x16, 20x12, 12x20, 18x14, 14x18); a batch's bucket is drawn in proportion
to the bucket's size.

Stage 1, VAE: L1 reconstruction + a small KL term; then `scaling_factor` = 1 / (std of the latents), so
the U-Net sees unit-variance latents as SD's does. Stage 2: the VAE is frozen, every training picture is
encoded once (cached latents: the VAE would otherwise cost as much per step as the U-Net), and U-Net and
text encoder train jointly on SD's epsilon objective with Min-SNR-5 loss weighting, 10% caption dropout
(the empty prompt, which classifier-free guidance uses as its unconditional branch) and an EMA of the
weights (the EMA is what is saved). Stage 3 (`--stage decoder`, also the end of `all`): the decoder alone
is fine-tuned on pictures with every shape and fill, star and stripes included, so that the codec can
draw what a LoRA later teaches; the encoder and with it the latent space stay as they were.

Reproducible: every random number comes from `--seed` (torch.manual_seed, numpy generators for the world
data). The learning rate is a function of the step (constant or, with `--decay cosine`, decaying over
`--unet-steps`), so a run stopped by `--*-minutes` (a wall-clock cap) after k steps equals the first k
steps of the uncapped run; the step counts are written to pretrain.json. The
pipeline folder is rewritten every `--save-minutes` (fp16 safetensors), so an interrupted run leaves
usable weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_kit.train import loss as loss_fns  # noqa: E402
from lora_kit.world import model as world_model  # noqa: E402
from lora_kit.world.procedural import generate_textured  # noqa: E402
from lora_kit.world.shapes import ALL_FILLS, ALL_SHAPES, generate  # noqa: E402

EMPTY_PROMPT = ""  # caption dropout target = the negative prompt of CFG sampling


# --- data ---------------------------------------------------------------------------------------------


def world_buckets(n: int, seed: int, **constraints) -> dict[tuple[int, int], dict]:
    """`n` world pictures grouped by canvas size: {(w, h): {"pixels": uint8 (N,3,H,W), "captions", "scenes"}}.

    `constraints` go to shapes.sample_scene (default: the pretraining world, no star, no stripes)."""
    buckets: dict[tuple[int, int], dict] = {}
    for image, text, scene in tqdm(generate(n, seed, **constraints), desc="rendering the world", leave=False):
        b = buckets.setdefault((scene.width, scene.height), {"pixels": [], "captions": [], "scenes": []})
        b["pixels"].append(np.asarray(image))
        b["captions"].append(text)
        b["scenes"].append(scene)
    for b in buckets.values():
        b["pixels"] = torch.from_numpy(np.stack(b["pixels"])).permute(0, 3, 1, 2).contiguous()
    return dict(sorted(buckets.items()))


class BucketSampler:
    """Seeded batches of indices from one bucket at a time, the bucket drawn in proportion to its size."""

    def __init__(self, sizes: dict, batch_size: int, seed: int):
        self.keys = list(sizes)
        self.sizes = np.array([sizes[k] for k in self.keys], dtype=np.float64)
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)

    def next(self) -> tuple[tuple[int, int], np.ndarray]:
        k = int(self.rng.choice(len(self.keys), p=self.sizes / self.sizes.sum()))
        n = int(self.sizes[k])
        return self.keys[k], self.rng.choice(n, size=min(self.batch_size, n), replace=False)


def to_model_range(pixels_uint8: torch.Tensor) -> torch.Tensor:
    return pixels_uint8.float() / 127.5 - 1.0


def random_crop(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """One seeded size x size window (multiple-of-4 offset) for the whole batch; size 0 keeps x whole.

    The VAE is fully convolutional (plus attention on the latent grid), so it trains on 32 px windows at
    a quarter of the cost of whole pictures and then runs on every canvas size."""
    if size <= 0:
        return x
    h, w = x.shape[-2:]
    top, left = (int(rng.integers(0, (d - size) // 4 + 1)) * 4 for d in (h, w))
    return x[..., top : top + size, left : left + size]


# --- saving -------------------------------------------------------------------------------------------


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished temp folder into place; the old folder disappears only once the new one exists."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a model folder follows the umask like any other
    old = out.with_name(f".{out.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)


def half_copy(module):
    return copy.deepcopy(module).to("cpu", torch.float16)


def save_pipeline(components: dict, out: Path, info: dict) -> None:
    """The pipeline folder, weights in fp16 safetensors (loaded back in fp32 they sample the same)."""
    comps = dict(components)
    for name in ("vae", "text_encoder", "unet"):
        comps[name] = half_copy(comps[name])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        world_model.make_pipeline(comps).save_pretrained(tmp, safe_serialization=True)
        load_text_encoder_as_fp32(tmp / "text_encoder" / "config.json")
        scrub_local_paths(tmp, f"lora-kit/{out.name}")
        (tmp / "pretrain.json").write_text(json.dumps(info, indent=2) + "\n")
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def scrub_local_paths(folder: Path, name: str) -> None:
    """diffusers writes the folder a model was loaded from into `_name_or_path`; shipped configs carry no local path."""
    for cfg_path in folder.glob("*/config.json"):
        cfg = json.loads(cfg_path.read_text())
        if "_name_or_path" in cfg:
            cfg["_name_or_path"] = name
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def load_text_encoder_as_fp32(config_path: Path) -> None:
    """Make transformers load the fp16-stored text encoder in fp32.

    transformers 5 loads with dtype="auto", i.e. the dtype in config.json, while diffusers loads its models
    in fp32 by default: a plain `StableDiffusionPipeline.from_pretrained(folder)` would pair an fp16 text
    encoder with an fp32 U-Net and fail on CPU. fp16 is only the storage format here (smaller wheel)."""
    cfg = json.loads(config_path.read_text())
    cfg["dtype"] = "float32"
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def load_fp32(cls, folder: Path, subfolder: str, device):
    return cls.from_pretrained(folder, subfolder=subfolder, dtype=torch.float32).to(device)


# --- stage 1: VAE -------------------------------------------------------------------------------------


def reconstruction_loop(params, data: dict, args, loss_fn, device, *, seed: int, lr: float, steps: int, minutes: float, desc: str) -> dict:
    """Train `params` on 32 px windows of `data` (stages 1 and 3): AdamW, 50 warm-up steps, then constant.

    `loss_fn(x)` returns (loss to minimise, reconstruction loss to report); the returned stats record the
    steps, minutes and mean reconstruction loss of the last 50 steps."""
    sampler = BucketSampler({k: len(v["captions"]) for k, v in data.items()}, args.vae_batch_size, seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start, losses, step = time.time(), [], 0
    bar = tqdm(total=steps, desc=desc)
    while step < steps and time.time() - start < minutes * 60:
        key, idx = sampler.next()
        x = random_crop(to_model_range(data[key]["pixels"][idx]), args.vae_crop, sampler.rng).to(device)
        loss, rec_loss = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for g in opt.param_groups:  # linear warm-up, then constant (see the module docstring)
            g["lr"] = lr * min(1.0, (step + 1) / 50)
        opt.step()
        losses.append(rec_loss.item())
        step += 1
        bar.update(1)
        bar.set_postfix(rec=f"{np.mean(losses[-50:]):.4f}")
        if step % 50 == 0:
            tqdm.write(f"{desc} step {step} {time.time() - start:.0f}s rec {np.mean(losses[-50:]):.4f}")
    bar.close()
    return {"steps": step, "minutes": (time.time() - start) / 60, "final_rec_loss": float(np.mean(losses[-50:]))}


def train_vae(args, device) -> tuple:
    torch.manual_seed(args.seed)
    vae = world_model.build_vae(args.seed).to(device).train()
    data = world_buckets(args.vae_images, args.seed)

    def loss_fn(x):
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        rec_loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        return rec_loss + args.kl_weight * post.kl().mean(), rec_loss

    stats = reconstruction_loop(list(vae.parameters()), data, args, loss_fn, device, seed=args.seed, lr=args.vae_lr,
                                steps=args.vae_steps, minutes=args.vae_minutes, desc="VAE")
    vae.eval()
    std, mean = latent_stats(vae, data, device)
    vae.register_to_config(scaling_factor=float(1.0 / std))
    return vae, dict(stats, latent_std=std, latent_mean=mean, scaling_factor=float(1.0 / std))


@torch.no_grad()
def latent_stats(vae, data: dict, device, n: int = 512) -> tuple[float, float]:
    """std and mean of (unscaled) latents over up to `n` pictures spread across the buckets."""
    zs = []
    for b in data.values():
        k = max(1, n * len(b["captions"]) // sum(len(v["captions"]) for v in data.values()))
        zs.append(vae.encode(to_model_range(b["pixels"][:k]).to(device)).latent_dist.sample().flatten())
    z = torch.cat(zs)
    return float(z.std()), float(z.mean())


def decoder_buckets(n: int, seed: int) -> dict[tuple[int, int], dict]:
    """The decoder stage's pictures, bucketed like world_buckets: a third plain world pictures (every shape,
    solid), a third every world fill, a third procedural textures (lora_kit.world.procedural: gratings,
    checkerboards, dot lattices and plaids at any angle and period, half in random polygons)."""
    k = n // 3
    parts = [world_buckets(k, seed, shapes=ALL_SHAPES, fills=("solid",)),
             world_buckets(k, seed + 1, shapes=ALL_SHAPES, fills=tuple(f for f in ALL_FILLS if f != "solid"))]
    textured: dict[tuple[int, int], list] = {}
    for kind, image in tqdm(generate_textured(n - 2 * k, seed + 2), desc="procedural textures", leave=False):
        textured.setdefault(image.size, []).append(np.asarray(image))
    parts.append({size: {"pixels": torch.from_numpy(np.stack(v)).permute(0, 3, 1, 2).contiguous(), "captions": [""] * len(v)}
                  for size, v in textured.items()})
    out: dict[tuple[int, int], dict] = {}
    for part in parts:
        for size, b in part.items():
            o = out.setdefault(size, {"pixels": [], "captions": []})
            o["pixels"].append(b["pixels"])
            o["captions"] += b["captions"]
    return {size: {"pixels": torch.cat(b["pixels"]), "captions": b["captions"]} for size, b in sorted(out.items())}


def train_decoder(args, vae, device) -> dict:
    """Fine-tune the VAE decoder on every shape and fill of the world and on procedural textures.

    Why: the VAE is the codec, not the diffusion model. SD's VAE reconstructs any texture; ours, trained on
    flat fills only, shifted the colours of striped shapes, and once tuned on the demo's stripes it turned
    half of all checkerboards into stripes: a style LoRA's concept could not survive decoding. The encoder
    stays frozen, so the latents, and with them the U-Net and every cached latent, keep their meaning: only
    what the decoder draws from them improves. The U-Net and text encoder never see a star or a texture;
    those remain the LoRA concepts."""
    torch.manual_seed(args.seed + 500)
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    data = decoder_buckets(args.decoder_images, args.seed + 500)

    def loss_fn(x):
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        return loss, loss

    stats = reconstruction_loop(params, data, args, loss_fn, device, seed=args.seed + 500, lr=args.decoder_lr,
                                steps=args.decoder_steps, minutes=args.decoder_minutes, desc="VAE decoder")
    vae.requires_grad_(False).eval()
    return stats


def load_pipeline_components(out: Path, device) -> dict:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out, dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    comps = {k: pipe.components[k] for k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")}
    return {k: v.to(device) if k in ("vae", "unet", "text_encoder") else v for k, v in comps.items()}


# --- stage 2: U-Net + text encoder --------------------------------------------------------------------


@torch.no_grad()
def encode_buckets(vae, data: dict, device, batch: int = 64) -> dict:
    """Scaled latent means of every picture, per bucket (the VAE is frozen in stage 2)."""
    out = {}
    sf = vae.config.scaling_factor
    for key, b in tqdm(data.items(), desc="encoding latents", leave=False):
        px = b["pixels"]
        lat = [vae.encode(to_model_range(px[i : i + batch]).to(device)).latent_dist.mean * sf for i in range(0, len(px), batch)]
        out[key] = torch.cat(lat).cpu()
    return out


def noised_latents(latents, alphas_cumprod, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, eps, t): uniform timesteps and the DDPM forward process, lora_kit's own pure loss functions.

    Why not `scheduler.add_noise`: the pipeline's DPMSolverMultistepScheduler indexes its sigmas by the
    position of t in its *descending* `timesteps` until `set_timesteps` is called, so its add_noise(x, n, 999)
    is the least noisy input, not the noisiest. The first shipped base was trained that way (noise level
    reversed against the timestep label, Min-SNR weights with it): it drew colours weakly and got worse
    the longer it trained. lora_kit.train.loss is what the LoRA trainer uses, tested against DDPMScheduler."""
    noise = loss_fns.sample_noise(latents, generator)
    t = loss_fns.sample_timesteps(latents.shape[0], generator).to(latents.device)
    return loss_fns.add_noise(latents, noise, t, alphas_cumprod), noise, t


def diffusion_loss(unet, text_encoder, alphas_cumprod, latents, ids, gamma: float, generator):
    """Epsilon objective with Min-SNR-gamma weights (min(SNR, gamma) / SNR), batch mean."""
    noisy, noise, t = noised_latents(latents, alphas_cumprod, generator)
    pred = unet(noisy, t, text_encoder(ids)[0]).sample
    return loss_fns.diffusion_loss(pred, noise, t, alphas_cumprod, min_snr_gamma=gamma)


def caption_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids


def train_unet(args, vae, device) -> tuple:
    from diffusers.training_utils import EMAModel

    comps = world_model.build_components(args.seed)
    if args.resume:  # continue from the weights in --out (the saved EMA) with a fresh optimizer
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        comps["unet"] = load_fp32(UNet2DConditionModel, Path(args.out), "unet", device)
        comps["text_encoder"] = load_fp32(CLIPTextModel, Path(args.out), "text_encoder", device)
    unet, te, tok = comps["unet"].to(device).train(), comps["text_encoder"].to(device).train(), comps["tokenizer"]
    # a resumed run draws new batches, noise and dropouts rather than replaying the first run's
    stream = args.seed + (10_000 * len(args.previous_unet) if args.resume else 0)
    # --fresh-images: new pictures too, so that a long continuation does not revisit the same 12,000
    data = world_buckets(args.images, (stream if args.fresh_images else args.seed) + 100)
    latents = encode_buckets(vae, data, device)
    ids = {k: caption_ids(tok, v["captions"]) for k, v in data.items()}
    empty = caption_ids(tok, [EMPTY_PROMPT])[0]
    params = list(unet.parameters()) + list(te.parameters())
    ema = EMAModel(params, decay=args.ema_decay, use_ema_warmup=True, power=2 / 3)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    sampler = BucketSampler({k: len(v) for k, v in latents.items()}, args.batch_size, stream + 200)
    gen = torch.Generator().manual_seed(stream + 300)  # CPU: lora_kit.train.loss draws on the CPU, then moves
    alphas_cumprod = world_model.training_scheduler().alphas_cumprod.to(device)
    drop_rng = np.random.default_rng(stream + 400)
    comps.update(vae=vae, unet=unet, text_encoder=te)
    state = {"start": time.time(), "last_save": time.time(), "losses": [], "step": 0}
    bar = tqdm(total=args.unet_steps, desc="U-Net + text encoder")
    while state["step"] < args.unet_steps and time.time() - state["start"] < args.unet_minutes * 60:
        key, idx = sampler.next()
        batch_ids = ids[key][idx].clone()
        batch_ids[drop_rng.random(len(idx)) < args.caption_dropout] = empty
        loss = diffusion_loss(unet, te, alphas_cumprod, latents[key][idx].to(device), batch_ids.to(device), args.min_snr_gamma, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for g in opt.param_groups:
            g["lr"] = unet_lr(args, state["step"])
        opt.step()
        ema.step(params)
        state["losses"].append(loss.item())
        state["step"] += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(state['losses'][-100:]):.4f}")
        if state["step"] % 50 == 0:
            tqdm.write(f"unet step {state['step']} {time.time() - state['start']:.0f}s loss {np.mean(state['losses'][-100:]):.4f}")
        if time.time() - state["last_save"] > args.save_minutes * 60:
            save_with_ema(comps, ema, params, args, state)
    bar.close()
    save_with_ema(comps, ema, params, args, state)
    return comps, unet_stats(state)


def unet_lr(args, step: int) -> float:
    """Linear warm-up, then constant or a cosine decay to `--lr-end-fraction` of `--lr` at `--unet-steps`.

    The learning rate depends on the step only (never on the clock), so a run stopped by `--unet-minutes`
    after k steps still equals the first k steps of any longer run with the same arguments."""
    lr = args.lr * min(1.0, (step + 1) / args.warmup)
    if args.decay == "cosine":
        progress = min(1.0, step / max(1, args.unet_steps))
        lr *= args.lr_end_fraction + (1 - args.lr_end_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
    return lr


def unet_stats(state: dict) -> dict:
    return {"steps": state["step"], "minutes": (time.time() - state["start"]) / 60,
            "final_loss": float(np.mean(state["losses"][-100:])) if state["losses"] else math.nan}


def save_with_ema(comps: dict, ema, params, args, state: dict) -> None:
    ema.store(params)
    ema.copy_to(params)
    try:
        info = dict(args.info, unet=unet_stats(state))
        if args.resume:  # keep the history: the steps this run continued from
            info["unet_before_resume"] = args.previous_unet
        save_pipeline(comps, Path(args.out), info)
    finally:
        ema.restore(params)
    state["last_save"] = time.time()
    tqdm.write(f"saved {args.out} at step {state['step']}")


# --- main ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="lora_kit/world/weights/tiny-world", help="pipeline folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (stage vae/all)")
    p.add_argument("--stage", choices=("all", "vae", "unet", "decoder"), default="all",
                   help="unet: reuse the VAE in --out; decoder: only fine-tune the VAE decoder of --out (after all/vae)")
    p.add_argument("--resume", action="store_true", help="stage unet: continue from the U-Net and text encoder in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (2 threads on a busy 2-core box ran 20x slower: OpenMP barriers)")
    p.add_argument("--save-minutes", type=float, default=5.0, help="rewrite --out this often during stage 2")
    g = p.add_argument_group("VAE")
    g.add_argument("--vae-steps", type=int, default=600)
    g.add_argument("--vae-minutes", type=float, default=8.0, help="wall-clock cap")
    g.add_argument("--vae-images", type=int, default=4000)
    g.add_argument("--vae-batch-size", type=int, default=32)
    g.add_argument("--vae-crop", type=int, default=32, help="train on size x size windows (0: whole pictures)")
    g.add_argument("--vae-lr", type=float, default=2e-3)
    g.add_argument("--decoder-steps", type=int, default=1500, help="decoder fine-tuning (stage all/decoder)")
    g.add_argument("--decoder-minutes", type=float, default=10.0, help="wall-clock cap")
    g.add_argument("--decoder-lr", type=float, default=5e-4)
    g.add_argument("--decoder-images", type=int, default=6000, help="a third world, a third world fills, a third procedural")
    g.add_argument("--kl-weight", type=float, default=1e-6, help="times the KL summed over latent elements")
    g = p.add_argument_group("U-Net + text encoder")
    g.add_argument("--unet-steps", type=int, default=3000)
    g.add_argument("--unet-minutes", type=float, default=40.0, help="wall-clock cap")
    g.add_argument("--images", type=int, default=12000, help="world pictures (encoded once)")
    g.add_argument("--fresh-images", action="store_true", help="--resume: render new pictures instead of the first run's")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--lr", type=float, default=8e-4)
    g.add_argument("--warmup", type=int, default=100)
    g.add_argument("--decay", choices=("constant", "cosine"), default="constant", help="learning rate after the warm-up")
    g.add_argument("--lr-end-fraction", type=float, default=0.1, help="cosine: final lr as a fraction of --lr")
    g.add_argument("--caption-dropout", type=float, default=0.1)
    g.add_argument("--min-snr-gamma", type=float, default=5.0)
    g.add_argument("--ema-decay", type=float, default=0.999, help="upper bound; EMA warm-up power 2/3")
    return p.parse_args(argv)


def vae_args(previous: dict) -> dict:
    """The arguments of the run that trained the VAE, from a pretrain.json (kept when stage 2 runs again)."""
    history = previous.get("unet_before_resume") or []
    return previous.get("vae", {}).get("args") or (history[0].get("args", {}) if history else previous.get("args", {}))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    out = Path(args.out)
    if args.resume and args.stage != "unet":
        sys.exit("--resume continues stage 2: pass --stage unet")
    if args.stage in ("all", "vae") and (out / "model_index.json").exists() and not args.overwrite:
        sys.exit(f"{out} exists; pass --overwrite to replace it")
    args.info = {"seed": args.seed, "device": device.type, "torch": torch.__version__,
                 "args": {k: v for k, v in vars(args).items() if k not in ("out", "info")}}
    if args.stage == "decoder":
        return finetune_decoder_only(args, out, device)
    if args.stage == "unet":
        from diffusers import AutoencoderKL

        vae = load_fp32(AutoencoderKL, out, "vae", device).eval()
        previous = json.loads((out / "pretrain.json").read_text())
        args.info["vae"] = dict(previous.get("vae", {}), args=vae_args(previous))
        if "vae_decoder" in previous:  # a U-Net run leaves the decoder as it was: keep its record
            args.info["vae_decoder"] = previous["vae_decoder"]
        args.previous_unet = [*previous.get("unet_before_resume", []), dict(previous.get("unet", {}), args=previous.get("args", {}))]
    else:
        vae, args.info["vae"] = train_vae(args, device)
        print(f"VAE: {json.dumps(args.info['vae'])}")
        save_pipeline(dict(world_model.build_components(args.seed), vae=vae), out, args.info)
    if args.stage == "vae":
        return 0
    vae.requires_grad_(False)
    _, stats = train_unet(args, vae, device)
    print(f"U-Net: {json.dumps(stats)}")
    if args.stage == "all" and args.decoder_steps:  # from the saved folder: it holds the EMA weights, the live U-Net does not
        return finetune_decoder_only(args, out, device)
    return 0


def finetune_decoder_only(args, out: Path, device) -> int:
    """Stage "decoder" on an existing pipeline folder; its pretrain.json keeps the earlier stages' record."""
    comps = load_pipeline_components(out, device)
    info = json.loads((out / "pretrain.json").read_text())
    if "vae_decoder" in info:  # a decoder tuned again continues from the last one: keep its record
        info["vae_decoder_before"] = info.get("vae_decoder_before", []) + [info["vae_decoder"]]
    info["vae_decoder"] = dict(train_decoder(args, comps["vae"], device), args=args.info["args"])
    print(f"VAE decoder: {json.dumps(info['vae_decoder'])}")
    save_pipeline(comps, out, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
