"""`lora-kit convert IN --to kohya|diffusers OUT`: rewrite a LoRA in the other interchange format.

Lossless: tensors are copied (or cast with --precision), alphas are kept (kohya `.alpha` tensors <->
diffusers `lora_adapter_metadata`), metadata is carried over and the sshs_* hashes are recomputed.
LyCORIS LoHa/LoKr files only convert to kohya (a rewrite: SDXL names, precision); diffusers has no layout
for them, so `--to diffusers` is refused in one line.

SDXL kohya files use Stability's U-Net block names, whose numbering depends on the U-Net's layout.
The real SDXL layout is the default; files lora-kit wrote for a smaller U-Net record theirs; for any
other U-Net pass --base MODEL (diffusers folder / builtin:...) or --unet-config unet/config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from lora_kit.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("input", help="LoRA file: kohya, diffusers or peft .safetensors")
    parser.add_argument("--to", required=True, choices=("kohya", "diffusers"), help="output format")
    parser.add_argument("out", help="output file (.safetensors) or, for diffusers, a folder")
    parser.add_argument("--precision", choices=("same", "fp16", "bf16", "fp32"), default="same")
    parser.add_argument("--family", choices=("sd1", "sd2", "sd2v", "sdxl"), default=None,
                        help="model family when the file does not say (decides kohya's SDXL naming)")
    parser.add_argument("--base", default=None, help="base model whose U-Net config gives the SDXL block layout")
    parser.add_argument("--unet-config", default=None, help="a U-Net config.json (alternative to --base)")
    parser.add_argument("--allow-pickle", action="store_true", help="read .ckpt/.pt/.bin input (trusted files only)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")


def base_unet_config(base: str | None, unet_config: str | None) -> tuple[dict | None, str | None]:
    """(U-Net config, family) from --base or --unet-config."""
    if unet_config:
        try:
            return json.loads(Path(unet_config).read_text()), None
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read U-Net config {unet_config}: {exc}") from exc
    if not base:
        return None, None
    from lora_kit.models.loading import detect_family, resolve_model  # lazy: torch + diffusers, not for --help

    folder = Path(resolve_model(base))
    cfg_path = folder / "unet" / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{base}: no unet/config.json (pass a diffusers folder or use --unet-config)")
    cfg = json.loads(cfg_path.read_text())
    sched = folder / "scheduler" / "scheduler_config.json"
    sched_cfg = json.loads(sched.read_text()) if sched.is_file() else None
    return cfg, detect_family(cfg, sched_cfg)


def convert_file(src, to: str, out, *, precision: str | None = None, family: str | None = None,
                 unet_config: dict | None = None, allow_pickle: bool = False, overwrite: bool = False) -> Path:
    from lora_kit.adapters import formats, io, names  # lazy: torch, kept out of `lora-kit convert --help`

    parsed = io.read_lora_file(src, allow_pickle=allow_pickle, unet_config=unet_config)
    if family:
        parsed.family = family
    if unet_config is not None and parsed.family == "sdxl":
        parsed.unet_layout = names.layout_from_config(unet_config)
    meta = {k: v for k, v in parsed.metadata.items() if not k.startswith("sshs_") and k != "format"}
    if to == "diffusers" and not isinstance(parsed, formats.ParsedLora):
        raise UserError(f"{Path(src).name} is a LyCORIS {parsed.algo} file: diffusers has no LoHa/LoKr layout "
                        "(load_lora_weights rejects them); keep the kohya/LyCORIS file")
    if to == "kohya":
        return io.write_kohya_lora(out, parsed, meta, precision, overwrite=overwrite)
    return io.write_diffusers_lora(out, parsed, precision, meta, overwrite=overwrite)


def run(args) -> int:
    cfg, fam = base_unet_config(args.base, args.unet_config)
    out = convert_file(
        args.input, args.to, args.out, precision=None if args.precision == "same" else args.precision,
        family=args.family or fam, unet_config=cfg, allow_pickle=args.allow_pickle, overwrite=args.force,
    )
    print(f"wrote {args.to} LoRA {out}")
    return 0
