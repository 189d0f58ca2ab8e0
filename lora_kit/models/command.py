"""`lora-kit init-model OUT --preset tiny-sd15`: a tiny random-init pipeline in diffusers format."""

from __future__ import annotations

from pathlib import Path

from lora_kit.errors import UserError
from lora_kit.models.presets import PRESETS, get_preset, write_preset


def add_arguments(p) -> None:
    p.add_argument("out", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--preset", default="tiny-sd15", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")


def run(args) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    preset = get_preset(args.preset)
    write_preset(args.preset, out, seed=args.seed)
    print(f"wrote {preset.name} ({preset.description}, {preset.resolution} px) to {out}")
    return 0
