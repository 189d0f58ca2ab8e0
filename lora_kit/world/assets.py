"""Weights of the embedded tiny world shipped inside the package (lora_kit/world/weights/<name>/).

`builtin:tiny-world` is a diffusers pipeline folder; `tiny-world-controlnet` a ControlNetModel folder.
Until a folder is shipped, `builtin:` models fall back to the random-init presets of
lora_kit.models.presets. The lookup itself is lora_kit.paths' (shared with `models`, which must not
import `world`); these names stay importable from here for the world's own code.
"""

from __future__ import annotations

from lora_kit.paths import CONTROLNET, WEIGHTS_DIR, shipped_controlnet_dir, shipped_model_dir

__all__ = ["CONTROLNET", "WEIGHTS_DIR", "shipped_controlnet_dir", "shipped_model_dir"]
