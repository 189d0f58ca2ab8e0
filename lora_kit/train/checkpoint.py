"""Training-state checkpoints for exact resume, written so a crash never leaves one that looks complete.

`accelerator.save_state` stores optimizer, LR scheduler, grad scaler and every RNG; registered hooks
make it store only the adapter weights instead of the whole U-Net (as the diffusers scripts do).
lora-kit adds `train_state.json` (global step, epoch, sampler position, run id, resume fingerprint) and,
written last, `manifest.json` (every file's size and SHA-256, the run id). Everything goes into
`checkpoint-XXXXXX.partial/`, renamed to `checkpoint-XXXXXX/` only when complete: a killed save leaves a
`.partial` that resume ignores (and cleans), and a checkpoint damaged later (a truncated or deleted file)
fails its manifest, so `--resume latest` falls back to the newest one that is whole.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from lora_kit.errors import UserError
from lora_kit.utils import describe_write_fault, is_write_fault, swap_dir

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "train_state.json"
MANIFEST_FILE = "manifest.json"


def step_of(path: Path) -> int:
    return int(CKPT_RE.match(path.name).group(1))


def all_checkpoints(root: Path) -> list[Path]:
    """Every finished (renamed) checkpoint folder, whole or damaged, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and CKPT_RE.match(p.name)), key=step_of)


def run_id_of(path: Path) -> str | None:
    """The run a checkpoint belongs to (from its manifest), None when unreadable."""
    try:
        return json.loads((path / MANIFEST_FILE).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def checkpoints(root: Path, run_id: str | None = None) -> list[Path]:
    """Whole checkpoints (manifest verified) of `run_id` (any run when None), oldest first."""
    return [p for p in all_checkpoints(root) if (run_id is None or run_id_of(p) == run_id) and verify(p) is None]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path, run_id: str, step: int) -> None:
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE}
    text = json.dumps({"run_id": run_id, "step": step, "files": files}, indent=2, sort_keys=True)
    with open(folder / MANIFEST_FILE, "w", encoding="utf-8") as f:
        f.write(text)


def verify(path: Path) -> str | None:
    """None when the checkpoint is whole, else what is wrong with it (one phrase)."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"{MANIFEST_FILE} is missing (the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} is unreadable"
    if STATE_FILE not in files:
        return f"{STATE_FILE} is not in its manifest"
    for name, want in sorted(files.items()):
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{name} has {size} bytes, the manifest says {want['size']}"
        if _sha256(f) != want["sha256"]:
            return f"{name} does not match its SHA-256"
    return None


def resolve_resume(resume: str, root: Path, run_id: str | None, say=print) -> Path | None:
    """`latest` -> the newest whole checkpoint of the run (None if there is none), naming each damaged
    newer one it skips; else the given folder, which must be whole."""
    if resume != "latest":
        p = Path(resume)
        if not p.is_dir():
            raise UserError(f"--resume {resume}: no such checkpoint folder")
        problem = verify(p)
        if problem:
            raise UserError(f"--resume {resume}: not a complete lora-kit checkpoint ({problem})")
        return p
    for p in reversed(all_checkpoints(root)):
        if run_id is not None and run_id_of(p) not in (run_id, None):
            continue  # another run's checkpoint left in the folder (--overwrite)
        problem = verify(p)
        if problem is None:
            return p
        say(f"--resume latest: skipping {p.name}: {problem}")
    return None


def read_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())


def generator_state(gen: torch.Generator) -> str:
    return base64.b64encode(gen.get_state().numpy().tobytes()).decode()


def set_generator_state(gen: torch.Generator, state: str) -> None:
    gen.set_state(torch.from_numpy(np.frombuffer(base64.b64decode(state), dtype=np.uint8).copy()))


def save_checkpoint(accelerator, root: Path, step: int, run_state: dict, keep_last: int, run_id: str = "",
                    on_saved=None) -> Path:
    """All processes call this (accelerate gathers); only the main process writes the manifest and renames.
    A write refused by the disk ends the run with one line; the earlier checkpoints stay whole."""
    final = root / f"checkpoint-{step:06d}"
    partial = root / f"checkpoint-{step:06d}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()  # every rank has written its RNG state before the folder is renamed
        if accelerator.is_main_process:
            (partial / STATE_FILE).write_text(json.dumps({**run_state, "run_id": run_id}, indent=2))
            write_manifest(partial, run_id, step)  # last: its presence means every file above is complete
            swap_dir(partial, final)
            if on_saved is not None:
                on_saved()  # the run's recipe.toml / run.json, once it has a checkpoint to show
    except Exception as exc:
        if not is_write_fault(exc):
            raise
        shutil.rmtree(partial, ignore_errors=True)
        raise UserError(f"{describe_write_fault(exc)} while writing {final.name} in {root}; "
                        f"{intact_note(root, run_id)}") from exc
    if accelerator.is_main_process and keep_last > 0:
        for old in [p for p in all_checkpoints(root) if run_id_of(p) == run_id][:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)  # only this run's: another run's checkpoints are not ours
    accelerator.wait_for_everyone()
    return final


def intact_note(root: Path, run_id: str | None) -> str:
    """'checkpoint 4 is intact (resume with --resume latest)' or what is left when there is none."""
    whole = checkpoints(root, run_id)
    if not whole:
        return "no checkpoint of this run was written yet"
    return f"checkpoint {step_of(whole[-1])} is intact (free space, then --resume latest)"


def load_checkpoint(accelerator, path: Path) -> dict:
    accelerator.load_state(str(path))
    return read_state(path)


def clean_partials(root: Path) -> None:
    for p in root.glob("checkpoint-*.partial"):
        shutil.rmtree(p, ignore_errors=True)
