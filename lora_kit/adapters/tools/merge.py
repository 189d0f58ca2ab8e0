"""`lora-kit merge BASE LORA[:SCALE]... OUT`: fuse LoRAs into a base model and save a diffusers folder.

All the arithmetic is diffusers': `load_lora_weights` (one adapter per file), `set_adapters(weights)`,
`fuse_lora` (W += scale * alpha/r * up @ down) and `unload_lora_weights`. lora-kit first reads each file
with its own reader (any supported layout, unknown keys refused) and hands diffusers a temporary
diffusers-format file whose `lora_adapter_metadata` carries the trained alphas, so every input loads
at its trained strength. LyCORIS LoHa/LoKr files, which diffusers rejects, are added afterwards with
lora_kit.adapters.lycoris.apply (W += scale * delta-W, the A1111/ComfyUI formula).

The output is a diffusers folder, or with --single-file one .safetensors checkpoint in the LDM layout
A1111/ComfyUI and `from_single_file` load (Stability's key names for U-Net, VAE and text encoders, mapped
by lora_kit.adapters.single_file: diffusers ships that direction only as a repository script).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lora_kit.adapters import lycoris
from lora_kit.adapters.embedding import TokenRows, embedding_of_lora
from lora_kit.adapters.formats import SDXL
from lora_kit.adapters.io import LOAD_ERRORS, load_failure, read_lora_file, write_diffusers_lora
from lora_kit.adapters.lycoris import ParsedLycoris
from lora_kit.adapters.single_file import save_single_file
from lora_kit.errors import UserError
from lora_kit.precision import to_dtype
from lora_kit.utils import save_pretrained_atomic


def add_arguments(parser) -> None:
    parser.add_argument("base", help="base model: diffusers folder, Hub id or builtin:tiny-sd15")
    parser.add_argument("loras", nargs="+", metavar="LORA[:SCALE]", help="LoRA files, each with an optional strength (default 1.0)")
    parser.add_argument("out", help="output diffusers folder (with --single-file: a .safetensors file)")
    parser.add_argument("--single-file", action="store_true",
                        help="write one LDM checkpoint (.safetensors) that A1111, ComfyUI and from_single_file load")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--allow-pickle", action="store_true", help="also read .ckpt/.pt LoRAs (only from trusted sources)")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="dtype of the saved model")


def parse_lora_arg(text: str) -> tuple[str, float]:
    """`file.safetensors:0.7` -> (file, 0.7); a colon not followed by a number is part of the path."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            return text, 1.0
        if not math.isfinite(scale):  # a nan/inf strength fuses nan into every weight it touches
            raise UserError(f"{text}: expected a finite strength after the colon, got {tail}")
        return head, scale
    return text, 1.0


def _load_pipeline(base: str, dtype):
    # lazy: diffusers (and transformers, via models.loading) add seconds to `lora-kit merge --help`
    import diffusers

    from lora_kit.models.loading import resolve_model

    local = resolve_model(base)
    if Path(local).is_file():
        raise UserError("merge needs a diffusers folder or Hub id as BASE (single-file checkpoints: convert first)")
    try:
        return diffusers.DiffusionPipeline.from_pretrained(local, torch_dtype=dtype)
    except OSError as exc:
        raise UserError(f"cannot load base model {base!r}: {exc}") from exc


def _family(pipe) -> str:
    from lora_kit.models.loading import detect_family  # lazy: diffusers + transformers, not for --help

    return detect_family(dict(pipe.unet.config), dict(pipe.scheduler.config))


def _check_family(parsed, family: str, path: str) -> None:
    if parsed.family is None:
        parsed.family = family
    elif (parsed.family == SDXL) != (family == SDXL):
        raise UserError(f"{Path(path).name} is a {parsed.family} LoRA but the base model is {family}")


def merge_loras(base: str, loras: list[tuple[str, float]], out, *, overwrite: bool = False,
                allow_pickle: bool = False, dtype: str = "fp32", single_file: bool = False) -> Path:
    """Fuse `loras` [(file, scale)] into `base` and save the pipeline to `out` (atomically): a diffusers
    folder, or with `single_file` one LDM .safetensors checkpoint (lora_kit.adapters.single_file)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --force to replace it")
    if single_file and out.suffix != ".safetensors":
        raise UserError(f"--single-file writes one .safetensors checkpoint; name OUT *.safetensors (got {out.name})")
    torch_dtype = to_dtype(dtype)
    pipe = _load_pipeline(base, torch.float32)  # fuse in fp32, cast when saving
    family = _family(pipe)
    adapter_names, scales, lycos = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (path, scale) in enumerate(tqdm(loras, desc="loading LoRAs", unit="file")):
            parsed = read_lora_file(path, allow_pickle=allow_pickle, unet_config=dict(pipe.unet.config))
            _check_family(parsed, family, path)
            if isinstance(parsed, ParsedLycoris):  # diffusers cannot load LoHa/LoKr: added below, exactly
                lycos.append((parsed, scale))
                continue
            staged = write_diffusers_lora(Path(tmp) / f"lora{i}.safetensors", parsed, precision="fp32")
            name = f"lora{i}"
            try:
                pipe.load_lora_weights(str(staged), adapter_name=name)
            except LOAD_ERRORS as exc:  # read fine, but its modules do not fit this base (another model's LoRA)
                raise load_failure(path, exc, dict(pipe.unet.config)) from exc
            adapter_names.append(name)
            scales.append(scale)
    components = [c for c in ("unet", "text_encoder", "text_encoder_2") if getattr(pipe, c, None) is not None]
    if adapter_names:
        pipe.set_adapters(adapter_names, adapter_weights=scales)
        pipe.fuse_lora(components=components, lora_scale=1.0, adapter_names=adapter_names)
        pipe.unload_lora_weights()
    for parsed, scale in lycos:
        lycoris.apply(parsed, {c: getattr(pipe, c) for c in components}, scale)
    # Pivotal-tuning LoRAs: their trigger words' trained rows go into the merged text encoders too.
    embeddings = [e for e in (embedding_of_lora(p) for p, s in loras if s != 0) if e is not None]
    if embeddings:
        TokenRows().apply([getattr(pipe, c) for c in components if c != "unet"], pipe.tokenizer, embeddings)
    pipe.to(torch_dtype)
    if single_file:
        merged = json.dumps([{"lora": Path(p).name, "scale": s} for p, s in loras])  # file names, never paths
        return save_single_file(pipe, family, out, {"format": "pt", "lora_kit.merged": merged})
    return _save_pipeline(pipe, out)


def _save_pipeline(pipe, out: Path) -> Path:
    return save_pretrained_atomic(pipe, out)


def run(args) -> int:
    loras = [parse_lora_arg(x) for x in args.loras]
    for path, _ in loras:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such file")
    out = merge_loras(args.base, loras, args.out, overwrite=args.force, allow_pickle=args.allow_pickle, dtype=args.dtype,
                      single_file=args.single_file)
    print(f"merged {len(loras)} LoRA(s) into {out}")
    return 0
