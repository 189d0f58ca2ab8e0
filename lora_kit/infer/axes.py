"""Grid axes: applying an axis value to a cell, labelling it, and finding a run's checkpoint files.

An axis is A1111 X/Y/Z-plot's idea (Prompt S/R, Seed, Steps, CFG Scale, Checkpoint name...) with the
LoRA-specific ones first-class: `weight` (per LoRA), `checkpoint` (several files of one training run in
one LoRA slot) and `control_scale` (per ControlNet).
"""

from __future__ import annotations

import re
from pathlib import Path

from safetensors import safe_open

from lora_kit.errors import UserError
from lora_kit.infer.parameters import fmt_number
from lora_kit.infer.schedulers import canonical_sampler_name
from lora_kit.infer.spec import Axis, CellParams, LoraRef
from lora_kit.paths import DIFFUSERS_WEIGHT_NAME

_SCALARS = {"prompt": str, "negative_prompt": str, "seed": int, "cfg": float, "steps": int, "clip_skip": int, "strength": float}
_NUMBERS = {**_SCALARS, "weight": float, "control_scale": float}


def _value(axis: Axis, index: int):
    """The axis' `index`-th value as its kind's type (the command line gives strings)."""
    value, kind = axis.values[index], _NUMBERS.get(axis.kind, str)
    try:
        return kind(value)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise UserError(f"grid axis {axis.kind}: expected {what} for each value, got {value!r}") from None


def _lora_slots(cell: CellParams, target: str, kind: str) -> list[LoraRef]:
    if not target:
        return list(cell.loras)
    found = [lo for lo in cell.loras if lo.name == target]
    if not found:
        names = ", ".join(lo.name for lo in cell.loras) or "none"
        raise UserError(f"grid axis {kind}:{target}: no LoRA named {target!r} (LoRAs: {names})")
    return found


def apply_axis(cell: CellParams, axis: Axis, index: int) -> CellParams:
    """A copy of `cell` with the axis' `index`-th value set."""
    value = _value(axis, index)
    c = cell.replace()
    kind = axis.kind
    if kind in _SCALARS:
        setattr(c, kind, value)
    elif kind == "sampler":
        c.sampler = canonical_sampler_name(str(value))
    elif kind == "weight":
        slots = _lora_slots(c, axis.target, kind)
        if not slots:
            raise UserError("grid axis weight: no LoRA given (--lora FILE)")
        for lo in slots:
            lo.weight = value
    elif kind == "checkpoint":
        _apply_checkpoint(c, axis, index)
    elif kind == "control_scale":
        slot = int(axis.target) if axis.target.isdigit() else len(c.controls)  # a name is no ControlNet's index
        nets = c.controls if not axis.target else c.controls[slot:slot + 1]
        if not nets:
            raise UserError(f"grid axis control_scale{':' + axis.target if axis.target else ''}: no such ControlNet")
        for net in nets:
            net.scale = value
    return c


def _apply_checkpoint(c: CellParams, axis: Axis, index: int) -> None:
    path = str(axis.values[index])
    label = axis.labels[index] if axis.labels else Path(path).stem
    if not c.loras:
        c.loras.append(LoraRef(path=path, weight=1.0, name=axis.target or "lora", label=label))
        return
    slots = _lora_slots(c, axis.target, "checkpoint")
    if len(slots) != 1:
        raise UserError("grid axis checkpoint: several LoRAs are given; name the slot with checkpoint:NAME")
    slots[0].path, slots[0].label = path, label


def value_label(axis: Axis, index: int) -> str:
    """The text drawn for one axis value."""
    if axis.labels:
        return axis.labels[index]
    v = axis.values[index]
    kind = axis.kind
    if kind in ("prompt", "sampler"):
        return str(v)
    fmt = {
        "negative_prompt": lambda: f"neg: {v}" if v else "no negative",
        "seed": lambda: f"seed {v}",
        "cfg": lambda: f"CFG {fmt_number(v)}",
        "steps": lambda: f"{v} steps",
        "clip_skip": lambda: f"clip skip {v}",
        "strength": lambda: f"strength {fmt_number(v)}",
        "weight": lambda: f"{axis.target}: {fmt_number(v)}" if axis.target else f"weight {fmt_number(v)}",
        "checkpoint": lambda: Path(str(v)).stem,
        "control_scale": lambda: f"control{('[' + axis.target + ']') if axis.target else ''} {fmt_number(v)}",
    }
    return fmt[kind]()


# ---------------------------------------------------------------------------- checkpoint discovery


def _label(path: Path, key) -> str:
    if key == "final":
        return "final"
    m = _STEP.search(path.as_posix().removesuffix(".safetensors"))
    return f"step {key}" if m and m.group(1) != "-" else path.stem

_STEP = re.compile(r"(step|checkpoint-|ckpt-|-)0*(\d+)(?=\D*$)")
_SECONDARY = ("_diffusers", Path(DIFFUSERS_WEIGHT_NAME).stem)  # same adapter as the kohya file beside it


def _is_lora_file(path: Path) -> bool:
    """Header-only check that every tensor is a LoRA tensor (accelerate's model.safetensors is not)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception:
        return False
    lora = re.compile(r"lora|\.alpha$|dora_scale|magnitude")
    return bool(keys) and all(lora.search(k) for k in keys)


def step_of(path: Path, root: Path) -> int | None:
    rel = path.relative_to(root).as_posix()
    m = _STEP.search(rel.removesuffix(".safetensors"))
    return int(m.group(2)) if m else None


def discover_checkpoints(run_dir: str | Path) -> tuple[list[str], list[str]]:
    """LoRA files of a training run, oldest first, with labels ("step 500", "final").

    Looks at the run folder, `exports/` (lora-kit's intermediate exports), `checkpoints/*/` and
    `checkpoint-*/`. A kohya file and its diffusers twin of the same step count once (kohya kept).
    """
    root = Path(run_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"checkpoint folder {run_dir} does not exist")
    candidates = [*root.glob("*.safetensors"), *root.glob("exports/*.safetensors"),
                  *root.glob("checkpoints/*/*.safetensors"), *root.glob("checkpoint-*/*.safetensors")]  # fmt: skip
    by_step: dict = {}
    for p in sorted(set(candidates)):
        if not _is_lora_file(p):
            continue
        step = step_of(p, root)
        key = step if step is not None else "final"
        secondary = any(s in p.name for s in _SECONDARY)
        if key not in by_step or (by_step[key][1] and not secondary):
            by_step[key] = (p, secondary)
    if not by_step:
        raise UserError(f"no LoRA .safetensors files found in {run_dir} (looked in ., exports/, checkpoints/*/, checkpoint-*/)")
    steps = sorted(k for k in by_step if k != "final")
    order = steps + (["final"] if "final" in by_step else [])
    paths = [str(by_step[k][0]) for k in order]
    # "-000005" is kohya's epoch numbering: shown as the file name rather than called a step
    labels = [_label(by_step[k][0], k) for k in order]
    return paths, labels
