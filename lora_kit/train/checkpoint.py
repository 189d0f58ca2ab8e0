"""Training-state checkpoints for exact resume, written so a crash never leaves one that looks complete.

`accelerator.save_state` stores optimizer, LR scheduler, grad scaler and every RNG; registered hooks
make it store only the adapter weights instead of the whole U-Net (as the diffusers scripts do).
lora-kit adds `train_state.json` (global step, epoch, sampler position, noise-generator state) and writes
everything into `checkpoint-XXXXXX.partial/`, renamed to `checkpoint-XXXXXX/` only when complete:
a directory rename is atomic, so a killed save leaves a `.partial` that resume ignores (and cleans).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import torch

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "train_state.json"


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CKPT_RE.match(p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def resolve_resume(resume: str, root: Path) -> Path | None:
    """`latest` -> newest complete checkpoint (None if there is none); else the given folder."""
    if resume == "latest":
        found = checkpoints(root)
        return found[-1] if found else None
    p = Path(resume)
    if not (p / STATE_FILE).exists():
        from lora_kit.errors import UserError

        raise UserError(f"--resume {resume}: not a complete lora-kit checkpoint (no {STATE_FILE})")
    return p


def generator_state(gen: torch.Generator) -> str:
    return base64.b64encode(gen.get_state().numpy().tobytes()).decode()


def set_generator_state(gen: torch.Generator, state: str) -> None:
    import numpy as np

    gen.set_state(torch.from_numpy(np.frombuffer(base64.b64decode(state), dtype=np.uint8).copy()))


def save_checkpoint(accelerator, root: Path, step: int, run_state: dict, keep_last: int) -> Path:
    """All processes call this (accelerate gathers); only the main process writes and renames."""
    final = root / f"checkpoint-{step:06d}"
    partial = root / f"checkpoint-{step:06d}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every rank has written its RNG state before the folder is renamed
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps(run_state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        for old in checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict:
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())


def clean_partials(root: Path) -> None:
    for p in root.glob("checkpoint-*.partial"):
        shutil.rmtree(p, ignore_errors=True)
