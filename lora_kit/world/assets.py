"""Weights of the embedded tiny world shipped inside the package (lora_kit/world/weights/<name>/).

Until the pretrained tiny world is shipped, no folder exists and `builtin:` models fall back to the
random-init presets of lora_kit.models.presets.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def shipped_model_dir(name: str) -> Path | None:
    p = WEIGHTS_DIR / name
    return p if (p / "model_index.json").exists() else None
