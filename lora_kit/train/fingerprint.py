"""The resume fingerprint: everything that decides the data order and the step's math.

Stored in each checkpoint's train_state.json and compared on resume. A changed base model, batch size,
accumulation, process count, seed, bucket setting or dataset (its manifest: which images, captions, repeats and
buckets, in order) would make the resumed run silently differ from the one that was interrupted, so it
is refused naming the keys; `--force-resume` continues anyway (the result then differs from an
uninterrupted run). A changed network shape or optimizer cannot continue at all: the saved weights or optimizer
state would not load (AdamW's state into torch's AdamW: a KeyError mid-run; into Lion: silently misread).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lora_kit.errors import UserError

# The saved adapter and optimizer tensors have these shapes: never resumable across a change.
NETWORK_SHAPE = ("network.rank", "network.target", "network.target_modules", "network.conv_rank",
                 "network.use_dora", "network.train_text_encoder", "network.text_encoder_rank", "network.text_encoder_target", "network.algo",
                 "network.factor", "network.block_dims", "network.conv_block_dims",
                 # the optimizer's parameter groups (block lr weights, LoRA+): its saved state has their layout
                 "optimizer.lr_weights", "optimizer.loraplus",
                 "optimizer.name")  # each optimizer keeps its own state (AdamW8bit's quantised moments, Prodigy's d)


def recipe_fingerprint(recipe, num_processes: int) -> dict:
    """The part known before the model loads (checked early, so a refusal costs nothing)."""
    r, n, b, o = recipe, recipe.network, recipe.buckets, recipe.optimizer
    out = {
        "seed": r.seed,
        "train.batch_size": r.train.batch_size,
        "train.gradient_accumulation_steps": r.train.gradient_accumulation_steps,
        "processes": num_processes,
        "network.alpha": n.alpha, "network.conv_alpha": n.conv_alpha, "network.text_encoder_alpha": n.text_encoder_alpha,
        "network.rank": n.rank, "network.target": n.target, "network.target_modules": list(n.target_modules),
        "network.conv_rank": n.conv_rank, "network.use_dora": n.use_dora,
        "network.train_text_encoder": n.train_text_encoder, "network.text_encoder_rank": n.text_encoder_rank,
        "network.text_encoder_target": n.text_encoder_target,
        "network.algo": n.algo, "network.factor": n.factor,
        "network.block_dims": list(n.block_dims), "network.conv_block_dims": list(n.conv_block_dims),
        "network.block_alphas": list(n.block_alphas), "network.conv_block_alphas": list(n.conv_block_alphas),
        "optimizer.name": o.name,
        "optimizer.lr_weights": [o.down_lr_weight, o.mid_lr_weight, o.up_lr_weight],
        "optimizer.loraplus": [o.loraplus_lr_ratio, o.loraplus_unet_lr_ratio, o.loraplus_text_encoder_lr_ratio],
    }
    m = r.model
    out.update({"model.pretrained": model_name(m.pretrained), "model.revision": m.revision, "model.variant": m.variant,
                "model.vae": model_name(m.vae), "model.clip_skip": m.clip_skip, "model.zero_terminal_snr": m.zero_terminal_snr})
    for key in ("enabled", "resolution", "bucket_reso_steps", "min_bucket_reso", "max_bucket_reso",
                "bucket_no_upscale", "random_crop"):
        out[f"buckets.{key}"] = getattr(b, key)
    return out


def model_name(source: str) -> str:
    """A base model as the fingerprint knows it: a Hub id or builtin name as written, a local folder or file by its
    name only (a moved model folder still resumes, like a moved dataset; a different checkpoint does not)."""
    if source and not source.startswith("builtin:") and Path(source).expanduser().exists():
        return Path(source).expanduser().resolve().name
    return source


def data_fingerprint(train_data) -> dict:
    """The dataset manifest hash of a `TrainData`: each sample's folder, file name, caption, repeats, size
    and bucket, in dataset order (not the absolute path, so a moved dataset folder still resumes)."""
    ds = train_data.dataset
    h = hashlib.sha256()
    for s in ds.samples:
        rec, pl = s.record, s.placement
        name = rec.path.replace("\\", "/").rsplit("/", 1)[-1]
        h.update(json.dumps([rec.folder, name, rec.caption, rec.class_tokens, rec.repeats, rec.is_reg,
                             list(rec.size), list(pl.bucket)], default=str).encode())
    return {"dataset.samples": len(ds.samples), "dataset.manifest": h.hexdigest()[:16]}


def compare(saved: dict | None, current: dict, checkpoint: str, force: bool) -> list[str]:
    """Keys that changed (only those present in both). Raises unless `force`; a network shape or optimizer
    change raises even then. Returns the changed keys so the caller can say what it continues with."""
    if not saved:
        return []
    changed = [k for k in current if k in saved and _norm(saved[k]) != _norm(current[k])]
    if not changed:
        return []
    detail = ", ".join(f"{k} {_show(saved[k])} -> {_show(current[k])}" for k in changed)
    shape = [k for k in changed if k in NETWORK_SHAPE]
    if shape:
        raise UserError(f"cannot resume {checkpoint}: the network shape or optimizer changed ({detail}); its weights "
                        f"and optimizer state cannot load into this run: use the old values or start a new run (--overwrite)")
    if not force:
        raise UserError(f"cannot resume {checkpoint}: changed since it was written: {detail}; use the old values, "
                        f"or pass --force-resume to continue anyway (the result then differs from an uninterrupted run)")
    return changed


def _norm(v):
    return list(v) if isinstance(v, tuple) else v


def _show(v) -> str:
    if isinstance(v, str) and len(v) == 16 and all(c in "0123456789abcdef" for c in v):
        return v[:8]
    return json.dumps(v) if not isinstance(v, (int, float)) else str(v)
