"""Evaluation grids: expand a GridSpec into cells, render them in fused batches, write the outputs.

Outputs in `out_dir`:
- `grid.png`: every cell with the axis labels drawn in (see lora_kit.infer.render);
- `cells/NNN.png`: each cell alone, with its A1111 `parameters` text chunk (A1111/Civitai read it);
- `refs/NNN.png`: weight-0 references rendered only to measure the LoRA's effect (when the grid has none);
- `grid.json`: the manifest (every cell's full parameters, relative paths, batch, metrics);
- `grid.html`: a self-contained page (relative image paths, no network).

Render order is not cell order: cells are grouped by LoRA weight set (one fuse per set) and then by
everything-but-the-seed (one pipeline call per batch, one torch.Generator per seed). The manifest records
each cell's batch, so `render_cell` re-renders a cell byte-for-byte; rendering a batched cell alone
matches within one 8-bit level (batched and single matmuls round differently).
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PIL import Image
from tqdm.auto import tqdm

from lora_kit.errors import UserError
from lora_kit.infer.axes import apply_axis, value_label
from lora_kit.infer.html import write_html
from lora_kit.infer.metrics import ClipScorer, pixel_distance
from lora_kit.infer.parameters import controlnet_field, fmt_number, format_parameters, strip_lora_tags
from lora_kit.infer.pipeline import LoraPipeline, ModelInfo, model_display_name
from lora_kit.infer.render import Layout, compose_grid, plan_layout, save_png
from lora_kit.infer.schedulers import canonical_sampler_name
from lora_kit.infer.spec import Axis, CellParams, GridSpec, cell_from_dict, cell_to_dict, local_path, portable_path
from lora_kit.runtime import ThreadGovernor
from lora_kit.utils import atomic_write_json, nearest_existing

MANIFEST_FORMAT = "lora-kit-grid/1"


@dataclass
class Cell:
    index: int
    row: int
    col: int
    params: CellParams
    row_label: str
    col_label: str
    axes: dict[str, Any]


@dataclass
class GridResult:
    out_dir: Path
    grid_path: Path
    manifest_path: Path
    html_path: Path
    image: Image.Image
    layout: Layout
    manifest: dict
    seconds: float  # generation time of all images (cells and references)

    @property
    def cells(self) -> list[dict]:
        return self.manifest["cells"]


def _combos(axes: list[Axis]) -> list[tuple[int, ...]]:
    return list(itertools.product(*[range(len(a.values)) for a in axes]))


def expand_cells(spec: GridSpec, native_size: tuple[int, int]) -> list[Cell]:
    """Row-major cells: rows = product of the row axes (outermost first), same for columns."""
    base = spec.base.replace(sampler=canonical_sampler_name(spec.base.sampler))
    base.width, base.height = base.width or native_size[0], base.height or native_size[1]
    cells = []
    for r, rc in enumerate(_combos(spec.rows)):
        for c, cc in enumerate(_combos(spec.cols)):
            p = base
            for axis, i in zip(spec.rows + spec.cols, rc + cc):
                p = apply_axis(p, axis, i)
            axes = {a.title: a.values[i] for a, i in zip(spec.rows + spec.cols, rc + cc)}
            rl = ", ".join(value_label(a, i) for a, i in zip(spec.rows, rc))
            cl = ", ".join(value_label(a, i) for a, i in zip(spec.cols, cc))
            problems = p.problems()
            if problems:
                where = " | ".join(x for x in (rl, cl) if x)
                raise UserError(f"grid{' cell ' + where if where else ''}: {'; '.join(problems)}")
            cells.append(Cell(len(cells), r, c, p, rl, cl, axes))
    return cells


def cell_parameters(p: CellParams, model: ModelInfo, short_hash: Callable[[str], str]) -> str:
    """The A1111 `parameters` text of one cell."""
    fields: dict[str, Any] = {
        "Steps": p.steps, "Sampler": canonical_sampler_name(p.sampler), "CFG scale": fmt_number(p.cfg),
        "Seed": p.seed, "Size": f"{p.width}x{p.height}", "Model hash": model.hash, "Model": model.name,
        "Denoising strength": fmt_number(p.strength) if p.init_image else None,
        "Clip skip": p.clip_skip if p.clip_skip > 1 else None,
    }  # fmt: skip
    for i, c in enumerate(p.controls):
        thresholds = (c.low, c.high) if c.preprocess == "canny" else None
        fields[f"ControlNet {i}"] = controlnet_field(c.preprocess, model_display_name(c.model), c.scale, c.start, c.end, thresholds)
    # A1111 refers to a LoRA by its file name (what a user types in <lora:...>).
    loras = [(Path(lo.path).stem if lo.path else lo.name, lo.weight, short_hash(lo.path) if lo.path else "") for lo in p.loras]
    return format_parameters(p.prompt, p.negative_prompt, fields, loras)


def _seed_key(p: CellParams) -> tuple[str, str, str, int]:
    """Everything that decides a cell's image: what a batch shares, plus its own prompts and seed."""
    return (p.batch_key(), p.prompt, p.negative_prompt, int(p.seed))


def find_references(params: list[CellParams], render_missing: bool) -> tuple[list[CellParams], list[tuple[str, int] | None]]:
    """For each cell, where its weight-0 twin is: ("cell", j), ("ref", k) or None; plus the refs to render."""
    shown = {_seed_key(p): j for j, p in enumerate(params) if not p.active_loras()}
    refs: list[CellParams] = []
    ref_index: dict = {}
    out: list[tuple[str, int] | None] = []
    for j, p in enumerate(params):
        if not p.active_loras():
            out.append(("cell", j))
            continue
        key = _seed_key(p.as_base())
        if key in shown:
            out.append(("cell", shown[key]))
        elif render_missing:
            if key not in ref_index:
                ref_index[key] = len(refs)
                refs.append(p.as_base())
            out.append(("ref", ref_index[key]))
        else:
            out.append(None)
    return refs, out


def plan_batches(params: list[CellParams], batch_size: int) -> list[list[int]]:
    """Indices grouped by LoRA weight set (files kept together), then by batch key, in chunks."""
    groups: dict[tuple, dict[str, list[int]]] = {}
    for i, p in enumerate(params):
        groups.setdefault(p.weight_key(), {}).setdefault(p.batch_key(), []).append(i)
    file_order: dict[tuple, int] = {}
    for key in groups:
        file_order.setdefault(tuple(k[0] for k in key), len(file_order))
    ordered = sorted(groups, key=lambda k: file_order[tuple(x[0] for x in k)])  # stable within a file set
    size = int(batch_size)  # >= 1: render_grid refuses less before the model loads
    return [idx[i : i + size] for k in ordered for idx in groups[k].values() for i in range(0, len(idx), size)]


def _old_cells(out: Path, overwrite: bool) -> list[Path]:
    """The cell pictures of a grid already in `out` (refused unless `overwrite`); removed once the new grid's
    cells are known to be renderable, so a bad setting never costs the old grid."""
    nearest = nearest_existing(out)
    if not nearest.is_dir():  # checked before the model loads; mkdir would fail after it
        raise UserError(f"--out {out}: {nearest} is a file; expected a folder for grid.png, grid.html, grid.json and cells/")
    ours = [out / n for n in ("grid.json", "grid.png", "grid.html")]
    pngs = [p for d in ("cells", "refs") for p in (out / d).glob("*.png")]
    if (any(p.exists() for p in ours) or pngs) and not overwrite:
        raise UserError(f"{out} already holds a grid; pass --overwrite (API: overwrite=True) to replace it")
    return pngs


def _generate_all(pipe: LoraPipeline, params: list[CellParams], spec: GridSpec, progress: bool) -> tuple[list, dict, float]:
    images: list = [None] * len(params)
    batch_of: dict[int, dict] = {}
    t0 = time.perf_counter()
    governor = ThreadGovernor()  # threads follow the cores other processes leave free (lora_kit.runtime)
    with tqdm(total=len(params), desc="grid", unit="img", disable=not progress) as bar:
        for batch in plan_batches(params, spec.batch_size):
            governor.tick()
            for i, im in zip(batch, pipe.generate([params[i] for i in batch], fuse=spec.fuse)):
                images[i] = im
            seeds = [int(params[i].seed) for i in batch]
            # A batch may mix prompts (CellParams.batch_key): re-rendering it needs each position's prompts.
            prompts = [[params[i].prompt, params[i].negative_prompt] for i in batch]
            for pos, i in enumerate(batch):
                batch_of[i] = {"seeds": seeds, "position": pos, "prompts": prompts}
            bar.update(len(batch))
    pipe.unfuse()
    return images, batch_of, time.perf_counter() - t0


def render_grid(spec: GridSpec, out_dir: str | Path, *, pipeline: LoraPipeline | None = None, overwrite: bool = False, progress: bool = True) -> GridResult:
    """Render every cell of `spec` and write grid.png, cells/, grid.json and grid.html to `out_dir`."""
    out = Path(out_dir)
    if int(spec.batch_size) < 1:
        raise UserError(f"grid batch size must be >= 1, got {spec.batch_size}")
    old = _old_cells(out, overwrite)
    pipe = pipeline or LoraPipeline.load(spec.model, spec.base.controls, dtype=spec.dtype, device=spec.device, single_file_config=spec.single_file_config)
    cells = expand_cells(spec, pipe.native_size())
    params = [c.params for c in cells]
    refs, ref_of = find_references(params, spec.base_distance)
    # Rendered before anything is written or removed: a LoRA file that fails to load mid-grid leaves no empty
    # folder and keeps the old grid (the files are written with their folders by atomic_write).
    images, batch_of, seconds = _generate_all(pipe, params + refs, spec, progress)
    for p in old:
        p.unlink()
    files = [f"cells/{i:03d}.png" for i in range(len(cells))] + [f"refs/{k:03d}.png" for k in range(len(refs))]
    texts = [cell_parameters(p, pipe.model, pipe.short_hash) for p in params + refs]
    for im, f, t in zip(images, files, texts):
        save_png(im, out / f, t)
    metrics = _metrics(images, params, ref_of, len(cells), spec, str(pipe.device))
    layout = plan_layout(_labels(cells, "row"), _labels(cells, "col"), params[0].width, params[0].height)
    corner = " / ".join(x for x in (" · ".join(a.title for a in spec.rows), " · ".join(a.title for a in spec.cols)) if x)
    grid = compose_grid(images[: len(cells)], layout, _labels(cells, "row"), _labels(cells, "col"), corner)
    save_png(grid, out / "grid.png")

    def ref_file(r):
        return None if r is None else files[r[1]] if r[0] == "cell" else files[len(cells) + r[1]]

    manifest = {
        "format": MANIFEST_FORMAT,
        "model": {"source": portable_path(pipe.model.source, out), "name": pipe.model.name, "family": pipe.family, "hash": pipe.model.hash},
        "fused": bool(spec.fuse), "batch_size": spec.batch_size, "dtype": str(pipe.pipe.unet.dtype).replace("torch.", ""),
        "clip_model": Path(spec.clip_model).name if spec.clip_model else "",
        "axes": {k: [_axis_dict(a, out) for a in axes] for k, axes in (("rows", spec.rows), ("cols", spec.cols))},
        "layout": layout.to_dict(),
        "timing": {"seconds": round(seconds, 3), "images": len(images), "seconds_per_image": round(seconds / max(1, len(images)), 4)},
        "cells": [
            {"index": c.index, "row": c.row, "col": c.col, "file": files[c.index], "row_label": c.row_label,
             "col_label": c.col_label, "axes": _portable_axes(c.axes, out), "params": cell_to_dict(c.params, out),
             "parameters": texts[c.index], "batch": batch_of[c.index], "reference": ref_file(ref_of[c.index]),
             "metrics": metrics[c.index]}
            for c in cells
        ],
        "references": [{"file": files[len(cells) + k], "params": cell_to_dict(p, out), "parameters": texts[len(cells) + k],
                        "batch": batch_of[len(cells) + k]} for k, p in enumerate(refs)],
    }  # fmt: skip
    manifest_path = atomic_write_json(out / "grid.json", manifest)
    html_path = write_html(manifest, out / "grid.html")
    return GridResult(out, out / "grid.png", manifest_path, html_path, grid, layout, manifest, seconds)


def _labels(cells: list[Cell], which: str) -> list[str]:
    if which == "row":
        return [c.row_label for c in cells if c.col == 0]
    return [c.col_label for c in cells if c.row == 0]


def _axis_dict(a: Axis, out: Path) -> dict:
    values = [portable_path(str(v), out) for v in a.values] if a.kind == "checkpoint" else a.values
    return {"kind": a.kind, "target": a.target, "values": values, "labels": [value_label(a, i) for i in range(len(a.values))]}


def _portable_axes(axes: dict, out: Path) -> dict:
    return {k: portable_path(v, out) if isinstance(v, str) and k.startswith("checkpoint") else v for k, v in axes.items()}


def _metrics(images: list, params: list[CellParams], ref_of: list, n: int, spec: GridSpec, device: str) -> list[dict]:
    out: list[dict] = [{} for _ in range(n)]
    for j in range(n):
        r = ref_of[j]
        if r is not None:
            ref_image = images[r[1]] if r[0] == "cell" else images[n + r[1]]
            out[j]["base_distance"] = round(pixel_distance(images[j], ref_image), 6)
    if spec.clip_model:
        scores = ClipScorer(spec.clip_model, device=device).score(images[:n], [strip_lora_tags(p.prompt) for p in params])
        for j, s in enumerate(scores):
            out[j]["clip_score"] = round(float(s), 4)
    return out


# ---------------------------------------------------------------------------- re-rendering


def load_manifest(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "grid.json"
    try:
        manifest = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"grid manifest {p} does not exist") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{p} is not a lora-kit grid manifest ({MANIFEST_FORMAT})")
    manifest["_root"] = str(p.parent)
    return manifest


def render_cell(manifest: str | Path | dict, index: int, *, alone: bool = False, pipeline: LoraPipeline | None = None) -> tuple[Image.Image, str]:
    """Re-render cell `index` of a grid from its manifest: (image, parameters text).

    By default the cell's recorded batch is re-run, which reproduces cells/NNN.png byte-for-byte;
    `alone=True` renders just this seed (exact when the grid used batch_size=1).
    """
    m = manifest if isinstance(manifest, dict) else load_manifest(manifest)
    root = Path(m["_root"])
    cell = m["cells"][index]
    params = cell_from_dict(cell["params"], root)
    if pipeline is None:
        pipeline = LoraPipeline.load(local_path(m["model"]["source"], root), params.controls, dtype=m.get("dtype", "auto"))
    seeds = [params.seed] if alone else cell["batch"]["seeds"]
    position = 0 if alone else cell["batch"]["position"]
    prompts = [[params.prompt, params.negative_prompt]] * len(seeds) if alone else cell["batch"].get("prompts")
    prompts = prompts or [[params.prompt, params.negative_prompt]] * len(seeds)  # manifests from before mixed batches
    cells = [params.replace(seed=s, prompt=p, negative_prompt=n) for s, (p, n) in zip(seeds, prompts)]
    images = pipeline.generate(cells, fuse=m["fused"])
    pipeline.unfuse()
    return images[position], cell_parameters(params, pipeline.model, pipeline.short_hash)
