"""Reading a finished training run directory: summary, resolved recipe, adapter files, newest sample grid.

Publishing takes everything from the run folder so that it needs no flags beyond the target. The sample
grid manifest (grid.json, written by lora_kit.infer) is read tolerantly: a missing or older manifest falls
back to the A1111 `parameters` chunk of each cell PNG, and a run without samples still publishes.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from lora_kit.adapters.io import DIFFUSERS_WEIGHT_NAME as DIFFUSERS_FILE
from lora_kit.config.load import recipe_from_dict
from lora_kit.config.schema import Recipe
from lora_kit.errors import UserError
from lora_kit.infer.parameters import parse_parameters, strip_lora_tags
from lora_kit.summary import FILE as SUMMARY_FILE, RunSummary

RECIPE_FILE = "recipe.toml"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class SampleImage:
    path: Path  # inside the run folder
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    weight: float | None = None  # LoRA strength the image was rendered at (None: unknown)
    parameters: str = ""  # the cell's A1111 `parameters` chunk, "" when it has none
    fields: dict = field(default_factory=dict)  # steps, cfg, sampler, size (manifest or chunk)


@dataclass
class Samples:
    step_dir: Path
    grid: Path | None
    cells: list[SampleImage]
    manifest: dict


@dataclass
class Run:
    root: Path
    summary: RunSummary
    recipe: Recipe | None  # the run's resolved recipe.toml, loaded and checked like any recipe
    kohya_file: Path
    diffusers_file: Path | None
    samples: Samples | None
    embedding_file: Path | None = None  # pivotal tuning: embeddings/<trigger>.safetensors, published with the LoRA

    @property
    def embedding_name(self) -> str:
        """The embedding's path relative to the run (and to the published folder): embeddings/<trigger>.safetensors."""
        return self.embedding_file.relative_to(self.root).as_posix() if self.embedding_file else ""

    @property
    def name(self) -> str:
        return self.summary.output_name or self.kohya_file.stem

    @property
    def family(self) -> str:
        return self.summary.family or "sd1"

    @property
    def base_model(self) -> str:
        return self.summary.base_model or (self.recipe.model.pretrained if self.recipe else "")

    @property
    def trigger_words(self) -> list[str]:
        words = self.summary.trigger_words or ([self.recipe.dataset.trigger_word] if self.recipe else [])
        return [str(w) for w in words if str(w).strip()]

    def save_field(self, key: str) -> str:
        """title/author/description/license: summary first (what training used), then the recipe's [save]."""
        value = getattr(self.summary, key) or (getattr(self.recipe.save, key) if self.recipe else "")
        return str(value or "")

    @property
    def tags(self) -> list[str]:
        return [str(t) for t in (self.summary.tags or (self.recipe.save.tags if self.recipe else []))]


def load_run(path: str | Path) -> Run:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"{path}: not a folder")
    summary_path = root / SUMMARY_FILE
    if not summary_path.is_file():
        raise UserError(f"{path}: not a lora-kit run folder (no {SUMMARY_FILE}; has training finished?)")
    summary = RunSummary.read(summary_path)
    recipe = _read_recipe(root / RECIPE_FILE)
    files = summary.files
    name = summary.output_name or (recipe.name if recipe else "lora")
    kohya = root / str(files.get("kohya") or f"{name}.safetensors")
    if not kohya.is_file():
        raise UserError(f"{path}: the kohya-format LoRA {kohya.name} is missing")
    diffusers = root / str(files.get("diffusers") or DIFFUSERS_FILE)
    embedding = root / str(files["embedding"]) if files.get("embedding") else None
    if embedding is not None and not embedding.is_file():  # the LoRA alone draws less than it was trained to
        raise UserError(f"{path}: the trigger word's embedding {files['embedding']} is missing (trained with "
                        "[network] train_trigger_embedding; the LoRA needs it)")
    return Run(root, summary, recipe, kohya, diffusers if diffusers.is_file() else None, find_samples(root), embedding)


def _read_recipe(path: Path) -> Recipe | None:
    """The run's resolved recipe through the recipe loader (types, defaults, checks); None without one."""
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path.name}: not valid TOML ({exc})") from exc
    return recipe_from_dict(data, path.name)


# ------------------------------------------------------------------------------------------- samples


def _step_number(folder: Path) -> int:
    m = re.search(r"(\d+)$", folder.name)
    return int(m.group(1)) if m else -1


def find_samples(root: Path) -> Samples | None:
    """The newest `samples/step-XXXXXX/` folder that holds any image, or None."""
    base = root / "samples"
    if not base.is_dir():
        return None
    for step_dir in sorted((p for p in base.iterdir() if p.is_dir()), key=_step_number, reverse=True):
        samples = read_sample_folder(step_dir)
        if samples.grid is not None or samples.cells:
            return samples
    return None


def read_sample_folder(step_dir: Path) -> Samples:
    manifest = {}
    if (step_dir / "grid.json").is_file():
        try:
            manifest = json.loads((step_dir / "grid.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            manifest = {}  # a broken manifest only loses labels; the PNG chunks still carry them
    grid_name = manifest.get("grid") or manifest.get("image") or "grid.png"
    grid = step_dir / str(grid_name)
    cells = _cells_from_manifest(step_dir, manifest) or _cells_from_pngs(step_dir)
    return Samples(step_dir, grid if grid.is_file() else None, cells, manifest)


def _first(d: dict, *keys, default=None):
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return default


def _cell_weight(cell: dict) -> float | None:
    """The LoRA weight of a cell: lora-kit manifests keep it in params.loras[0].weight."""
    w = _first(cell, "weight", "lora_weight", "scale")
    if w is None:
        ws = _first(cell, "loras", "weights", "lora_weights")
        if isinstance(ws, dict):
            ws = list(ws.values())
        if isinstance(ws, (list, tuple)) and ws:
            w = ws[0].get("weight") if isinstance(ws[0], dict) else ws[0]
    try:
        return None if w is None else float(w)
    except (TypeError, ValueError):
        return None


def _cells_from_manifest(step_dir: Path, manifest: dict) -> list[SampleImage]:
    """Cells of a grid.json: lora-kit's format (lora-kit-grid/1: generation settings under "params") or
    a flat one (settings on the cell itself)."""
    out = []
    for cell in manifest.get("cells") or []:
        rel = _first(cell, "file", "path", "image", "filename")
        if not rel or not (step_dir / str(rel)).is_file():
            continue
        image = step_dir / str(rel)
        p = {**cell, **(cell.get("params") or {})}
        fields = {k: p[k] for k in ("steps", "cfg", "sampler", "width", "height", "size") if p.get(k)}
        seed = _first(p, "seed")
        text = png_parameters(image) or str(cell.get("parameters") or "")
        out.append(SampleImage(
            image, str(_first(p, "prompt", default="")), str(_first(p, "negative_prompt", "negative", default="")),
            int(seed) if seed is not None else None, _cell_weight(p), text, fields,
        ))
    return out


def _cells_from_pngs(step_dir: Path) -> list[SampleImage]:
    out = []
    folder = step_dir / "cells" if (step_dir / "cells").is_dir() else step_dir
    for image in sorted(folder.glob("*.png")):
        if image.name == "grid.png":
            continue
        text = png_parameters(image)
        parsed = parse_parameters(text) if text else {}
        weights = list((parsed.get("loras") or {}).values())
        seed = parsed.get("Seed")
        out.append(SampleImage(
            image, _strip_tags(parsed.get("Prompt", "")), parsed.get("Negative prompt", ""),
            int(seed) if seed and str(seed).lstrip("-").isdigit() else None,
            weights[0] if weights else (0.0 if text else None), text,
        ))
    return out


def _strip_tags(prompt: str) -> str:
    return strip_lora_tags(prompt)


def png_parameters(path: Path) -> str:
    try:
        with Image.open(path) as im:
            return str(getattr(im, "text", {}).get("parameters", ""))
    except OSError:
        return ""


# --------------------------------------------------------------------------------------- base models


def hub_base_model(run: Run) -> str | None:
    """The base model as a Hub repo id, or None for builtin presets and local folders/files.

    Model cards and the diffusers loading snippet need a Hub id (`RepoCard.load(id).data.base_model`);
    a local path must never be published, so anything that exists on disk or looks like a path is None.
    """
    return as_hub_id(run.base_model, run.root)


def as_hub_id(value: str, near: Path | None = None) -> str | None:
    value = (value or "").strip()
    if not value or value.startswith(("builtin:", "/", "~", ".", "\\")) or re.match(r"^[A-Za-z]:", value):
        return None
    if value.endswith((".safetensors", ".ckpt", ".bin", ".pt")) or not _HUB_ID.match(value):
        return None
    if Path(value).exists() or (near is not None and (near / value).exists()):
        return None  # a relative local folder that happens to look like "owner/name"
    return value


def base_model_label(run: Run) -> str:
    """What the card says about the base model, without ever leaking a local path."""
    hub = hub_base_model(run)
    if hub:
        return hub
    value = run.base_model
    if value.startswith("builtin:"):
        return f"lora-kit built-in `{value[len('builtin:'):]}` (random-init test model)"
    name = re.split(r"[\\/]", value.rstrip("\\/"))[-1] if value else ""
    return f"a local model ({name})" if name else "unknown"


def is_builtin_base(run: Run) -> bool:
    return run.base_model.startswith("builtin:")
