"""Choices shared by both targets: which sample images to publish, their A1111 text, the private roots."""

from __future__ import annotations

import os
from pathlib import Path

from lora_kit.adapters.hashes import file_addnet_hash
from lora_kit.infer.parameters import format_parameters, parse_parameters, strip_lora_tags
from lora_kit.publish.rundir import Run, SampleImage


def _nonzero(cells: list[SampleImage]) -> list[SampleImage]:
    # Weight 0 cells show the base model without the LoRA: a baseline, not a preview of the LoRA.
    return [c for c in cells if c.weight is None or c.weight != 0.0]


def cells_at_weight(run: Run, weight: float) -> list[SampleImage]:
    """One image per prompt at the recommended weight (else the strongest weight sampled), first seed."""
    cells = _nonzero(run.samples.cells if run.samples else [])
    known = [c for c in cells if c.weight is not None]
    if known:
        chosen = [c for c in known if abs(c.weight - weight) < 1e-6]
        if not chosen:
            top = max(c.weight for c in known)
            chosen = [c for c in known if c.weight == top]
        cells = chosen
    seen, out = set(), []
    for c in cells:
        if c.prompt not in seen:
            seen.add(c.prompt)
            out.append(c)
    return out


def preview_cells(run: Run, limit: int = 20) -> list[SampleImage]:
    """Every LoRA-on cell, up to Civitai's 20 images per version."""
    return _nonzero(run.samples.cells if run.samples else [])[:limit]


def cell_parameters(run: Run, cell: SampleImage) -> str:
    """The cell's A1111 `parameters` text naming the published file, so A1111 and Civitai link the LoRA.

    Training grids name the in-memory adapter ("<lora:default:1>", no hash); here it becomes
    `<lora:<name>:w>` with "Lora hashes" (the first 12 hex digits of the addnet hash, as A1111 writes).
    A cell without text gets one rebuilt from the grid manifest.
    """
    short = file_addnet_hash(run.kohya_file)[:12]
    if cell.parameters:
        return retarget_parameters(cell.parameters, run.name, short)
    f = cell.fields
    size = f.get("size") or (f"{f['width']}x{f['height']}" if "width" in f and "height" in f else None)
    if isinstance(size, (list, tuple)):
        size = "x".join(str(v) for v in size)
    fields = {"Steps": f.get("steps"), "Sampler": f.get("sampler"), "CFG scale": f.get("cfg"),
              "Seed": cell.seed, "Size": size}
    weight = cell.weight if cell.weight is not None else 1.0
    return format_parameters(cell.prompt, cell.negative_prompt, fields, [(run.name, weight, short)])


def retarget_parameters(text: str, name: str, short_hash: str) -> str:
    """`text` with its single LoRA renamed to `name` and hashed; texts with 0 or 2+ LoRAs are kept as is."""
    parsed = parse_parameters(text)
    loras = parsed.get("loras") or {}
    if len(loras) != 1:
        return text
    ((alias, weight),) = loras.items()
    if alias == name and parsed.get("Lora hashes"):
        return text
    fields = {k: v for k, v in parsed.items() if k not in ("Prompt", "Negative prompt", "loras", "Lora hashes")}
    if not fields:  # no settings line A1111 would parse: rename only
        return text.replace(f"<lora:{alias}:", f"<lora:{name}:")
    prompt = strip_lora_tags(parsed["Prompt"])
    return format_parameters(prompt, parsed["Negative prompt"], fields, [(name, weight, short_hash)])


def private_roots(run: Run, *more: str | Path) -> list[str]:
    """Absolute paths the run knows about (run folder, dataset folders, a local base model, outputs)."""
    found = [str(run.root.resolve()), *(str(m) for m in more)]
    candidates = [*run.summary.dataset_dirs, run.summary.base_model]
    if run.recipe:
        r = run.recipe
        candidates += [r.model.pretrained, r.model.vae, r.dataset.path, r.dataset.reg_path, r.output_dir,
                       r.sample.control_image]
    for value in candidates:
        if isinstance(value, str) and value and (os.path.isabs(value) or value.startswith("~")):
            found.append(os.path.expanduser(value))
    return found
