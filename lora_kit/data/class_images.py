"""Class images rendered by the base model, for prior preservation without a folder of class pictures.

The diffusers DreamBooth script's `--class_prompt` / `--num_class_images`: before training, the base model
draws the class ("a photo of a dog") `reg_count` times, and those pictures, captioned with the prompt, are
the regularisation set. lora-kit does the same from `[dataset] reg_prompt` + `reg_count`:

- rendered once per (base model, prompt, size, seed) with the model's sampling defaults
  (lora_kit.infer.defaults: CFG 7, or 5 for builtin:tiny-world; 20 DPM++ 2M steps) at the bucket
  resolution, and kept in the user cache,
  `<cache>/class_images/<key>/<reg_repeats>_<prompt>/NNNN.png` + `NNNN.txt` (kohya's reg-folder layout,
  caption = the prompt), so a second run or a second LoRA on the same base reuses them;
- resumable: picture i has its own seed (recipe seed + i), each file is written atomically, and a run
  that stopped half-way renders only the missing ones (raising reg_count later adds pictures);
- the model hash is taken from the weights themselves (a sample of every tensor of the U-Net, text
  encoders and VAE, adapters excluded), so a changed checkpoint at the same path gets new pictures;
- the adapters being trained are switched off while rendering, so the pictures are the base's (an adapter
  init that rewrites the base weights, pissa/olora/loftq, renders from that residual base instead).

`render_jobs` and `sampling_settings` also render `[dataset] reg_from_captions` (lora_kit.data.caption_priors).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lora_kit.adapters.inject import adapters_disabled, tuner_layers
from lora_kit.errors import UserError
from lora_kit.infer.defaults import components_sampling_defaults
from lora_kit.infer.pipeline import LoraPipeline
from lora_kit.infer.spec import CellParams
from lora_kit.paths import cache_dir
from lora_kit.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

BATCH = 4  # pictures per pipeline call
_SAMPLE = 4096  # elements of each tensor that go into the model hash


def model_fingerprint(modules) -> str:
    """sha256 (16 hex digits) over the names, shapes and first _SAMPLE values of every non-adapter tensor.

    Hashing whole checkpoints (GBs for SDXL) on every run would cost more than it saves; a sample of every
    tensor changes whenever a fine-tune, a merge or a different checkpoint does."""
    h = hashlib.sha256()
    for i, module in enumerate(modules):
        for name, t in sorted(module.state_dict().items()):
            if "lora_" in name or not torch.is_tensor(t):
                continue
            h.update(f"{i}:{name.replace('.base_layer', '')}:{tuple(t.shape)}".encode())  # same with adapters injected or not
            h.update(t.detach().reshape(-1)[:_SAMPLE].to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def _slug(prompt: str) -> str:
    """The prompt as a folder name (kohya reads the class from it): safe characters, at most 60."""
    return re.sub(r"[^A-Za-z0-9 ,.'-]+", "_", prompt).strip()[:60] or "class"


def class_folder(key: str) -> Path:
    return cache_dir() / "class_images" / key


@dataclasses.dataclass(frozen=True)
class RenderJob:
    """One picture to render: its prompt, size and seed, and where it goes (`png`; the prompt is written
    beside it as `<stem>.txt`, the kohya caption sidecar)."""

    prompt: str
    width: int
    height: int
    seed: int
    png: Path


def sampling_settings(bundle) -> dict:
    """What every rendered picture's cache key holds besides its prompt, size and seed: the model's
    sampling defaults and the fingerprint of its weights."""
    defaults = components_sampling_defaults({"unet": bundle.unet})
    return {"steps": int(defaults["steps"]), "cfg": float(defaults["cfg"]), "sampler": defaults["sampler"],
            "model": model_fingerprint([bundle.unet, *bundle.text_encoders, bundle.vae])}  # fmt: skip


def _batches(jobs: list[RenderJob]) -> list[list[RenderJob]]:
    """Jobs in pipeline calls of up to BATCH pictures, one size per call (a call renders one size)."""
    by_size: dict[tuple[int, int], list[RenderJob]] = {}
    for job in jobs:
        by_size.setdefault((job.width, job.height), []).append(job)
    return [group[s : s + BATCH] for group in by_size.values() for s in range(0, len(group), BATCH)]


def render_jobs(bundle, settings: dict, jobs: list[RenderJob], device, desc: str = "class images") -> None:
    """Render `jobs` with the base (the adapters switched off) and write each atomically, the .png last so
    that an existing .png means a finished picture; the modules go back to their devices afterwards."""
    if not jobs:
        return
    unet, vae = bundle.unet, bundle.vae
    homes = [(m, next(m.parameters()).device) for m in [unet, vae, *bundle.text_encoders]]
    comps = {"unet": unet, "vae": vae, "scheduler": bundle.noise_scheduler, "text_encoders": bundle.text_encoders,
             "tokenizers": bundle.tokenizers}  # fmt: skip
    modules = [unet, *bundle.text_encoders]
    pipe = LoraPipeline.from_components(comps, bundle.family, name=bundle.source or "base")
    base = CellParams(prompt="", steps=settings["steps"], cfg=settings["cfg"], sampler=settings["sampler"])
    try:
        for m, _ in homes:
            m.to(device)
        with adapters_disabled(tuner_layers(modules)), tqdm(total=len(jobs), desc=desc, unit="img") as bar:
            for chunk in _batches(jobs):
                cells = [base.replace(prompt=j.prompt, width=j.width, height=j.height, seed=j.seed) for j in chunk]
                for job, image in zip(chunk, pipe.generate(cells, fuse=False)):
                    buf = io.BytesIO()
                    image.save(buf, format="PNG")
                    atomic_write_text(job.png.with_suffix(".txt"), job.prompt + "\n")
                    atomic_write_bytes(job.png, buf.getvalue())  # last: the .png marks it done
                bar.update(len(chunk))
    finally:
        for m, home in homes:
            m.to(home)


def ensure_class_images(recipe, bundle, accelerator):
    """The recipe with `[dataset] reg_path` pointing at the rendered class images (rendered first when
    missing, by the main process); the recipe itself when `reg_prompt` is not set."""
    ds = recipe.dataset
    if not ds.reg_prompt:
        return recipe
    if ds.reg_path:
        raise UserError(f"{recipe.source or '<recipe>'}: [dataset] reg_prompt: set reg_prompt (rendered class images) or reg_path (your own), not both")
    settings = {"prompt": ds.reg_prompt.strip(), "size": int(recipe.buckets.resolution), "seed": int(recipe.seed),
                **sampling_settings(bundle)}  # fmt: skip
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    root = class_folder(key)
    subset = root / f"{ds.reg_repeats}_{_slug(settings['prompt'])}"
    with accelerator.main_process_first():
        if accelerator.is_main_process:
            _prepare(root, subset, settings)
            size, seed = settings["size"], settings["seed"]
            jobs = [RenderJob(settings["prompt"], size, size, seed + i, subset / f"{i:04d}.png") for i in range(ds.reg_count)]
            render_jobs(bundle, settings, [j for j in jobs if not j.png.is_file()], accelerator.device)
    # Only the first reg_count pictures are this run's (a larger earlier run may have left more).
    keep = {f"{i:04d}" for i in range(ds.reg_count)}
    extra = [p for p in subset.iterdir() if p.stem not in keep]
    if extra:
        root = _view(key, subset, ds.reg_count)
    return dataclasses.replace(recipe, dataset=dataclasses.replace(ds, reg_path=str(root)))


def _prepare(root: Path, subset: Path, settings: dict) -> None:
    """The folder of this key, with its subset named by the recipe's reg_repeats (a cache folder: renamed
    from an earlier reg_repeats rather than rendered again) and a class_images.json describing it."""
    root.mkdir(parents=True, exist_ok=True)
    for other in root.iterdir():
        if other.is_dir() and other != subset and not subset.exists() and other.name.split("_", 1)[-1] == subset.name.split("_", 1)[-1]:
            other.rename(subset)
    subset.mkdir(exist_ok=True)
    atomic_write_json(root / "class_images.json", settings)


def _view(key: str, subset: Path, count: int) -> Path:
    """A folder of links to the first `count` pictures, for a run that asks for fewer than the cache holds
    (outside the key's folder, which is scanned whole when a run uses all of it)."""
    view = cache_dir() / "class_images" / "views" / f"{key}-{count}" / subset.name
    view.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        for ext in (".png", ".txt"):
            link = view / f"{i:04d}{ext}"
            if not link.exists():
                link.symlink_to(subset / f"{i:04d}{ext}")
    return view.parent
