"""What one image needs (`CellParams`) and what a grid is (`GridSpec` = base cell + axes).

Plain dataclasses so a grid can be built from Python, from the command line or from a grid.json
manifest (`to_dict`/`from_dict` write local paths relative to the manifest, never absolute).
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lora_kit.errors import UserError


@dataclass
class LoraRef:
    """One LoRA slot: a kohya or diffusers .safetensors file and its weight (A1111 `<lora:name:weight>`)."""

    path: str = ""  # "" = an adapter already inside the model (training samples), addressed by `name`
    weight: float = 1.0
    name: str = ""  # alias in `<lora:name:w>` and "Lora hashes"; default: the file stem
    label: str = ""  # what the checkpoint axis prints, e.g. "step 500"

    def __post_init__(self):
        if not self.name:
            self.name = Path(self.path).stem if self.path else "default"


@dataclass
class ControlRef:
    """One ControlNet with its conditioning image and per-net scale / guidance window."""

    model: str  # diffusers folder, single .safetensors file or Hub id
    image: str = ""
    preprocess: str = "none"  # none | canny
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    low: float = 100.0  # Canny thresholds
    high: float = 200.0


@dataclass
class CellParams:
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "DPM++ 2M"
    width: int = 0  # 0 = the model's native size
    height: int = 0
    clip_skip: int = 1  # A1111 meaning: 1 = last CLIP layer, 2 = penultimate
    loras: list[LoraRef] = field(default_factory=list)
    controls: list[ControlRef] = field(default_factory=list)
    init_image: str = ""  # img2img when set
    strength: float = 0.75  # img2img denoising strength

    def problems(self) -> list[str]:
        """What no pipeline can render (diffusers fails deep inside, or silently does something else: 0 steps
        return noise, a negative CFG turns guidance off, clip skip 0 means 1)."""
        out = []
        if int(self.steps) < 1:
            out.append(f"steps must be >= 1, got {self.steps}")
        if not 0 <= float(self.cfg) < math.inf:
            out.append(f"cfg must be >= 0 and finite, got {self.cfg:g}")
        if int(self.seed) < 0:
            out.append(f"seed must be >= 0 (a grid is reproducible: there is no random seed), got {self.seed}")
        if int(self.clip_skip) < 1:
            out.append(f"clip_skip must be >= 1 (A1111's numbering: 1 = the last layer), got {self.clip_skip}")
        for side in ("width", "height"):
            v = int(getattr(self, side))
            if v and (v < 8 or v % 8):
                out.append(f"{side} must be a multiple of 8 (at least 8), got {v}")
        if self.init_image and not 0.0 < float(self.strength) <= 1.0:
            out.append(f"strength must be in (0, 1], got {self.strength:g}")
        out += [f"LoRA {lo.name or lo.path}: weight must be a finite number, got {lo.weight}" for lo in self.loras
                if not math.isfinite(float(lo.weight))]  # nan or inf weights render nan pictures (black) silently
        for i, c in enumerate(self.controls):
            if not math.isfinite(float(c.scale)):
                out.append(f"ControlNet {i}: its scale must be a finite number, got {c.scale}")
            if not 0.0 <= float(c.start) < float(c.end) <= 1.0:
                out.append(f"ControlNet {i}: its guidance window must satisfy 0 <= start < end <= 1, got {c.start:g}..{c.end:g}")
        return out

    def active_loras(self) -> list[LoraRef]:
        return [lo for lo in self.loras if float(lo.weight) != 0.0]

    def weight_key(self) -> tuple:
        """Cells with equal keys share one adapter state (fused once)."""
        return tuple((lo.path, lo.name, float(lo.weight)) for lo in self.active_loras())

    def batch_key(self) -> str:
        """Cells with equal keys differ only by seed and prompt and can share one pipeline call (each image
        has its own generator and its own prompt embedding in the batch)."""
        d = asdict(self)
        for per_image in ("seed", "prompt", "negative_prompt"):
            d.pop(per_image)
        d["loras"] = [list(k) for k in self.weight_key()]
        return json.dumps(d, sort_keys=True, default=str)

    def as_base(self) -> CellParams:
        """The same cell without any LoRA: the reference for the LoRA's effect size."""
        c = copy.deepcopy(self)
        c.loras = []
        return c

    def replace(self, **changes) -> CellParams:
        c = copy.deepcopy(self)
        for k, v in changes.items():
            setattr(c, k, v)
        return c


AXIS_KINDS = (
    "prompt", "negative_prompt", "seed", "cfg", "steps", "sampler", "clip_skip", "strength",
    "weight", "checkpoint", "control_scale",
)  # fmt: skip


@dataclass
class Axis:
    """One grid dimension. `target`: LoRA name (weight, checkpoint) or ControlNet index (control_scale)."""

    kind: str
    values: list
    target: str = ""
    labels: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.kind not in AXIS_KINDS:
            raise UserError(f"unknown grid axis {self.kind!r}; expected one of {', '.join(AXIS_KINDS)}")
        if not self.values:
            raise UserError(f"grid axis {self.kind!r} has no values")
        if self.labels and len(self.labels) != len(self.values):
            raise UserError(f"grid axis {self.kind!r}: {len(self.labels)} labels for {len(self.values)} values")

    @property
    def title(self) -> str:
        return f"{self.kind}:{self.target}" if self.target else self.kind


@dataclass
class GridSpec:
    model: str = "builtin:tiny-sd15"
    base: CellParams = field(default_factory=CellParams)
    cols: list[Axis] = field(default_factory=list)  # nested, outermost first
    rows: list[Axis] = field(default_factory=list)
    fuse: bool = True  # fuse each weight set into the base weights (base speed)
    batch_size: int = 4  # cells differing only by seed share one pipeline call
    base_distance: bool = True  # render weight-0 references when the grid has none
    clip_model: str = ""  # folder of a transformers CLIPModel + processor -> clip_score per cell
    single_file_config: str = ""
    dtype: str = "auto"  # auto = float16 on CUDA, float32 on CPU
    device: str = "auto"


# ---------------------------------------------------------------------------- serialisation


def _is_local(value: str) -> bool:
    return bool(value) and not value.startswith("builtin:") and Path(value).expanduser().exists()


def portable_path(value: str, root: Path) -> str:
    """Local paths relative to `root` (the manifest's folder); hub ids and builtin: names unchanged."""
    if not _is_local(value):
        return value
    return Path(os.path.relpath(Path(value).expanduser().resolve(), root.resolve())).as_posix()


def local_path(value: str, root: Path) -> str:
    """Inverse of portable_path for a manifest read from `root`."""
    if not value or value.startswith("builtin:") or Path(value).is_absolute():
        return value
    candidate = root / value
    return str(candidate) if candidate.exists() else value


def _map_paths(cell: dict, fn) -> dict:
    cell = copy.deepcopy(cell)
    cell["init_image"] = fn(cell["init_image"])
    for lo in cell["loras"]:
        lo["path"] = fn(lo["path"])
    for c in cell["controls"]:
        c["model"], c["image"] = fn(c["model"]), fn(c["image"])
    return cell


def cell_to_dict(cell: CellParams, root: Path) -> dict[str, Any]:
    return _map_paths(asdict(cell), lambda p: portable_path(p, root))


def cell_from_dict(d: dict, root: Path) -> CellParams:
    d = _map_paths(d, lambda p: local_path(p, root))
    known = {f.name for f in fields(CellParams)}
    kw = {k: v for k, v in d.items() if k in known}
    kw["loras"] = [LoraRef(**lo) for lo in d.get("loras", [])]
    kw["controls"] = [ControlRef(**c) for c in d.get("controls", [])]
    return CellParams(**kw)
