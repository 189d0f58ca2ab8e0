"""`lora-kit init-model OUT --preset tiny-sd15`: a tiny random-init pipeline in diffusers format."""

from __future__ import annotations

import os
from pathlib import Path

from lora_kit.errors import UserError
from lora_kit.models.presets import PRESETS, get_preset, write_preset
from lora_kit.utils import nearest_existing


def add_arguments(p) -> None:
    p.add_argument("out", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--preset", default="tiny-sd15", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder (one with model_index.json)")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an OUT that is a file, sits under a file or a folder it cannot write in, or holds files that
    are not a model: --overwrite replaces a model folder, never a file or a folder of the user's own files."""
    blocker = nearest_existing(out.parent)
    if not blocker.is_dir():
        raise UserError(f"{out}: cannot create the folder {out.parent}: {blocker} is a file")
    if not os.access(blocker, os.W_OK | os.X_OK):
        raise UserError(f"{out}: cannot write in {blocker}: permission denied (read-only folder)")
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out} is a file; expected a folder for the diffusers model (--overwrite replaces a model folder, not a file)")
    if not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    if any(out.iterdir()) and not (out / "model_index.json").is_file():
        raise UserError(f"{out} holds files that are not a diffusers model (no model_index.json); "
                        "--overwrite replaces only a model folder: choose another OUT")


def run(args) -> int:
    out = Path(args.out)
    check_out(out, args.overwrite)
    preset = get_preset(args.preset)
    write_preset(args.preset, out, seed=args.seed)
    print(f"wrote {preset.name} ({preset.description}, {preset.resolution} px) to {out}")
    return 0
