"""Sampling defaults a model carries: CFG scale, steps and sampler used when the user gives none.

Stable Diffusion checkpoints are sampled at CFG 7 with 20 DPM++ 2M steps (A1111's defaults). A model
can say otherwise: lora-kit's embedded `builtin:tiny-world` was evaluated at CFG 5 (docs/world.md: its
shapes and colours are right 99 % / 96 % of the time there), and any diffusers folder may hold a
`lora_kit_sampling.json` (`{"cfg": 5.0, "steps": 20, "sampler": "DPM++ 2M"}`, any subset). `lora-kit grid`
and the trainer's sample grids fill in whatever the user did not set from here.
"""

from __future__ import annotations

import json
from pathlib import Path

from lora_kit.errors import UserError
from lora_kit.paths import builtin_name, is_builtin, shipped_model_dir

GENERIC = {"cfg": 7.0, "steps": 20, "sampler": "DPM++ 2M"}
BUILTIN = {"tiny-world": {"cfg": 5.0, "steps": 20, "sampler": "DPM++ 2M"}}
SAMPLING_FILE = "lora_kit_sampling.json"


def _from_folder(folder: Path) -> dict:
    for name, values in BUILTIN.items():
        shipped = shipped_model_dir(name)
        if shipped is not None and folder.resolve() == shipped.resolve():
            return values
    f = folder / SAMPLING_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{f}: not valid JSON ({e})") from None
    unknown = set(data) - set(GENERIC)
    if unknown:
        raise UserError(f"{f}: unknown key(s) {sorted(unknown)}; expected some of cfg, steps, sampler")
    return data


def sampling_defaults(model: str | Path | None) -> dict:
    """{"cfg", "steps", "sampler"} for a model spec (builtin:NAME, a folder, a file or a Hub id)."""
    out = dict(GENERIC)
    if model is None or model == "":
        return out
    text = str(model)
    if is_builtin(text):
        out.update(BUILTIN.get(builtin_name(text), {}))
        return out
    path = Path(text).expanduser()
    if path.is_dir():
        out.update(_from_folder(path))
    return out


def components_sampling_defaults(components) -> dict:
    """sampling_defaults of the folder a pipeline's (or components dict's) U-Net was loaded from."""
    unet = components.get("unet") if isinstance(components, dict) else getattr(components, "unet", None)
    source = getattr(getattr(unet, "config", None), "_name_or_path", "") or ""
    return sampling_defaults(source)


def resolve(values: dict, defaults: dict) -> dict:
    """`values` with every unset entry (None, 0 or "") taken from `defaults`."""
    return {k: (v if v not in (None, 0, 0.0, "") else defaults[k]) for k, v in values.items()}
