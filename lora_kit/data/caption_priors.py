"""Prior pictures rendered by the base from each concept caption without its trigger word.

`[dataset] reg_from_captions = N`: DreamBooth's class prompt, per caption. A style LoRA trained with generic
prior pictures leaks its style into prompts that share words with its captions: a checkerboard style
trained on "a yellow zyk triangle on a black background" drew checkers on "a yellow circle on a black
background", since no prior picture had those words. So before training the base renders, for every
distinct (caption, bucket) of the concept set, N pictures of the caption with the trigger taken out
("a yellow triangle on a black background"), and those are the reg set: every word the concept's
captions use is also seen without the trigger.

- captions as the trainer reads them (`base_caption`: the sidecar, else the class tokens), the trigger
  removed by `captions.strip_trigger`; a caption that is nothing but the trigger renders nothing;
- sizes: the bucket the trainer puts the concept image in, so the pictures train at the concept's shapes;
- seeds recipe seed + j (j < N), the model's sampling defaults, the adapters switched off
  (`class_images.render_jobs`, as `reg_prompt`);
- cache: one file per picture, `<cache>/class_images/captions/<key>.png` (+ `.txt`, the caption), the key a
  hash of (model fingerprint, sampling settings, caption, width, height, seed): a stopped run resumes, and
  other datasets or recipes on the same base share the pictures they have in common;
- the reg set is a view folder of links in kohya layout, `<cache>/class_images/views/captions-<hash>/`:
  `<reg_repeats>_captions/` holds this run's pictures, and a `reg_path` of your own is mirrored beside it
  (real folders, linked files), so both are the reg set; the view's name hashes its contents.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from lora_kit.data.buckets import assign, buckets_for
from lora_kit.data.captions import base_caption, strip_trigger
from lora_kit.data.class_images import RenderJob, class_folder, render_jobs, sampling_settings
from lora_kit.data.layout import parse_kohya_folder, walk
from lora_kit.data.sources import detect_kind, scan_dataset
from lora_kit.errors import UserError
from lora_kit.paths import resolve_dataset_path

log = logging.getLogger(__name__)

PICTURES = "captions"  # class_folder(PICTURES): the cached pictures of every run


def picture_key(settings: dict, caption: str, width: int, height: int, seed: int) -> str:
    """The cache name of one picture: everything that changes its pixels."""
    described = {**settings, "prompt": caption, "width": int(width), "height": int(height), "seed": int(seed)}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def caption_jobs(recipe, settings: dict) -> list[RenderJob]:
    """reg_from_captions pictures per distinct (caption without the trigger, bucket) of the concept set, in
    scan order; captions that are only the trigger word are left out."""
    ds = recipe.dataset
    buckets = buckets_for(recipe.buckets)
    wanted: dict[tuple[str, tuple[int, int]], None] = {}  # ordered set
    empty = 0
    # warn=False: the trainer scans the concept set again and warns about each unreadable file there, once.
    for record in scan_dataset(ds, decode=False, warn=False).records:
        caption = strip_trigger(base_caption(record.caption, record.class_tokens), ds.trigger_word, ds.tag_separator or ",")
        if not caption:
            empty += 1
            continue
        wanted[caption, assign(record.size, buckets, recipe.buckets, None).bucket] = None
    if empty:
        log.info("reg_from_captions: %d concept caption(s) are only the trigger word; nothing rendered for them", empty)
    folder = class_folder(PICTURES)
    return [
        RenderJob(caption, w, h, recipe.seed + j, folder / f"{picture_key(settings, caption, w, h, recipe.seed + j)}.png")
        for caption, (w, h) in wanted
        for j in range(ds.reg_from_captions)
    ]


def _own_reg_files(reg_path: str) -> dict[str, str]:
    """{path in the view: file} mirroring a reg_path of the user's, as the scanner reads it."""
    root = resolve_dataset_path(reg_path)
    if detect_kind(root) != "folder":
        raise UserError(f"[dataset] reg_path: {reg_path!r} is a metadata or save_to_disk dataset; with reg_from_captions "
                        "it must be a folder of images (kohya layout), as the rendered pictures are one")  # fmt: skip
    # A root named N_name is itself a subset (layout.concept_of): it stays one, as a folder of the view.
    prefix = f"{root.name}/" if parse_kohya_folder(root.name)[0] is not None else ""
    out = {}
    for folder, names in walk(root, root, recursive=True):
        rel = folder.relative_to(root)
        for name in sorted(names):
            out[prefix + (rel / name).as_posix()] = str((folder / name).absolute())
    return out


def view_entries(jobs: list[RenderJob], reg_repeats: int, reg_path: str = "") -> dict[str, str]:
    """{path in the view: file it links to}: the pictures in `<reg_repeats>_captions/`, the user's reg set beside."""
    own = _own_reg_files(reg_path) if reg_path else {}
    taken = {rel.split("/", 1)[0] for rel in own}
    subset, n = f"{reg_repeats}_captions", 2
    while subset in taken:  # the user's reg folder has a subset of that name already
        subset, n = f"{reg_repeats}_captions {n}", n + 1
    entries = {}
    for job in jobs:
        for file in (job.png, job.png.with_suffix(".txt")):
            entries[f"{subset}/{file.name}"] = str(file)
    return {**entries, **own}


def build_view(entries: dict[str, str]) -> Path:
    """The view folder of `entries` (made once: its name hashes them; built aside, then renamed in place)."""
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:16]
    views = class_folder("views")
    view = views / f"captions-{digest}"
    if view.is_dir():
        return view
    tmp = views / f".tmp-captions-{digest}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, target in entries.items():
        link = tmp / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    try:
        tmp.rename(view)
    except OSError:  # another run built the same view meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        if not view.is_dir():
            raise
    return view


def ensure_caption_priors(recipe, bundle, accelerator):
    """The recipe with `[dataset] reg_path` pointing at the view of the caption priors (rendered first where
    missing, by the main process); the recipe itself when `reg_from_captions` is 0."""
    ds = recipe.dataset
    if ds.reg_from_captions <= 0:
        return recipe
    settings = sampling_settings(bundle)
    jobs = caption_jobs(recipe, settings)
    if not jobs and not ds.reg_path:
        raise UserError(f"{recipe.source or '<recipe>'}: [dataset] reg_from_captions: every concept caption is only the "
                        f"trigger word {ds.trigger_word!r}, so there is nothing to render; caption the images, or set reg_prompt instead")  # fmt: skip
    entries = view_entries(jobs, ds.reg_repeats, ds.reg_path)
    with accelerator.main_process_first():
        if accelerator.is_main_process:
            class_folder(PICTURES).mkdir(parents=True, exist_ok=True)
            todo = [j for j in jobs if not j.png.is_file()]
            render_jobs(bundle, settings, todo, accelerator.device, desc="caption priors")
        view = build_view(entries)
    return dataclasses.replace(recipe, dataset=dataclasses.replace(ds, reg_path=str(view)))
