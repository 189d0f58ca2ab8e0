"""Weights of the embedded tiny world shipped inside the package (lora_kit/world/weights/<name>/).

`builtin:tiny-world` is a diffusers pipeline folder; `tiny-world-controlnet` a ControlNetModel folder.
Until a folder is shipped, `builtin:` models fall back to the random-init presets of
lora_kit.models.presets.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CONTROLNET = "tiny-world-controlnet"


def shipped_model_dir(name: str) -> Path | None:
    """A shipped pipeline folder (has model_index.json), or None."""
    p = WEIGHTS_DIR / name
    return p if (p / "model_index.json").exists() else None


def shipped_controlnet_dir(name: str = CONTROLNET) -> Path | None:
    """A shipped ControlNetModel folder (has config.json), or None."""
    p = WEIGHTS_DIR / name
    return p if (p / "config.json").exists() else None
