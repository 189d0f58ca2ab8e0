"""Inference and evaluation grids: base model + stacked LoRAs (+ ControlNets), labelled grids, metrics.

    from lora_kit.infer import GridSpec, CellParams, LoraRef, Axis, render_grid
    spec = GridSpec(model="builtin:tiny-sd15", base=CellParams(prompt="a star", loras=[LoraRef("style.safetensors")]),
                    cols=[Axis("weight", [0, 0.5, 1])], rows=[Axis("seed", [1, 2])])
    result = render_grid(spec, "grids/style")      # grid.png, grid.html, grid.json, cells/NNN.png

Names are imported lazily so `import lora_kit.infer` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Axis": "spec", "CellParams": "spec", "ControlRef": "spec", "GridSpec": "spec", "LoraRef": "spec",
    "LoraPipeline": "pipeline", "render_grid": "grid", "render_cell": "grid", "GridResult": "grid",
    "load_manifest": "grid", "render_training_samples": "training", "canny": "control",
    "prepare_control_image": "control", "make_scheduler": "schedulers", "SAMPLERS": "schedulers",
    "format_parameters": "parameters", "parse_parameters": "parameters", "discover_checkpoints": "axes",
    "ClipScorer": "metrics", "pixel_distance": "metrics",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lora_kit.infer.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lora_kit.infer' has no attribute {name!r}")
