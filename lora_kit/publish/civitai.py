"""The Civitai target: a zip to drag into Civitai's upload wizard (Civitai has no public upload API).

    <name>.safetensors     kohya format with ss_*/modelspec.* metadata (Civitai and A1111 read it)
    previews/*.png         sample images with their A1111 `parameters` chunk (Civitai fills the image
                           details from it) and the sample grid
    <name>.civitai.json    sidecar shaped like Civitai's model-version API: name, baseModel in Civitai's
                           vocabulary, trainedWords, description, file hashes (SHA256, AutoV2...), weight
    civitai-upload.txt     what to paste into each field of the wizard
The zip is written to a temporary file beside OUT.zip and renamed, and never replaces a file unless asked.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from lora_kit import __version__
from lora_kit.adapters.hashes import file_hashes
from lora_kit.errors import UserError
from lora_kit.publish import privacy, stage
from lora_kit.publish.rundir import Run, SampleImage
from lora_kit.publish.settings import Details, civitai_base_model, fmt, training_settings
from lora_kit.utils import atomic_write, atomic_write_json, atomic_write_text

UPLOAD_GUIDE = "civitai-upload.txt"


def build_civitai_bundle(run: Run, details: Details, out_zip: str | Path, *, overwrite: bool = False) -> list[str]:
    """Write OUT.zip; returns the member names in the order written."""
    out_zip = Path(out_zip)
    if out_zip.suffix.lower() != ".zip":
        raise UserError(f"--civitai {out_zip}: the bundle must be a .zip file")
    if out_zip.exists() and not overwrite:
        raise UserError(f"{out_zip} exists; pass --overwrite to replace it")
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_zip.stem}.", dir=out_zip.parent))
    try:
        names = stage_bundle(run, details, staging)
        privacy.check_folder(staging, stage.private_roots(run, out_zip.parent))
        _write_zip(staging, names, out_zip, _zip_time(run))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return names


def stage_bundle(run: Run, details: Details, folder: Path) -> list[str]:
    kohya = run.kohya_file.name
    privacy.copy_safetensors(run.kohya_file, folder / kohya)
    images = []
    for i, cell in enumerate(stage.preview_cells(run), start=1):
        rel = f"previews/{i:02d}-w{fmt(cell.weight if cell.weight is not None else details.weight)}-seed{cell.seed or 0}.png"
        text = privacy.copy_png(cell.path, folder / rel, {"parameters": stage.cell_parameters(run, cell)})
        images.append((rel, cell, text.get("parameters", "")))
    names = [kohya] + [rel for rel, _, _ in images]
    if run.embedding_file is not None:  # pivotal tuning: the LoRA needs its trigger's embedding
        privacy.copy_safetensors(run.embedding_file, folder / run.embedding_name)
        names.append(run.embedding_name)
    if run.samples is not None and run.samples.grid is not None:
        privacy.copy_png(run.samples.grid, folder / "previews" / "grid.png")
        names.append("previews/grid.png")
    hashes = file_hashes(folder / kohya)
    sidecar = sidecar_json(run, details, (folder / kohya).stat().st_size, hashes, images)
    atomic_write_json(folder / f"{run.name}.civitai.json", sidecar)
    atomic_write_text(folder / UPLOAD_GUIDE, upload_guide(run, details, hashes))
    return names + [f"{run.name}.civitai.json", UPLOAD_GUIDE]


def _image_meta(cell: SampleImage, parameters: str) -> dict:
    f = cell.fields
    meta = {"prompt": privacy.scrub_text(cell.prompt), "negativePrompt": privacy.scrub_text(cell.negative_prompt),
            "seed": cell.seed, "steps": f.get("steps"), "cfgScale": f.get("cfg"), "sampler": f.get("sampler"),
            "loraWeight": cell.weight}
    if parameters:
        meta["parameters"] = parameters  # the PNG chunk itself, already scrubbed
    return {k: v for k, v in meta.items() if v not in (None, "")}


def sidecar_json(run: Run, details: Details, size: int, hashes: dict, images: list) -> dict:
    precision = run.recipe.save.precision if run.recipe else "fp16"
    return {
        "name": details.title,
        "type": "LORA",
        "baseModel": civitai_base_model(run),
        "trainedWords": details.trigger_words,
        "description": details.description,
        "recommendedWeight": details.weight,
        "tags": details.tags,
        "license": details.license,
        "author": details.author,
        "files": [{
            "name": run.kohya_file.name, "type": "Model", "primary": True, "sizeKB": round(size / 1024, 3),
            "metadata": {"format": "SafeTensor", "fp": precision},
            # Upper-case hex, as Civitai lists them; AutoV2 = first 10 hex digits of the SHA-256.
            "hashes": {"SHA256": hashes["sha256"].upper(), "AutoV2": hashes["autov2"].upper(),
                       "AutoV1": hashes["autov1"].upper(), "AddNet": hashes["addnet"].upper()},
        }],
        "images": [{"file": rel, "meta": _image_meta(cell, text)} for rel, cell, text in images],
        "trainingDetails": dict(training_settings(run, details)),
        "generator": f"lora-kit {__version__}",
    }


def upload_guide(run: Run, details: Details, hashes: dict) -> str:
    words = ", ".join(details.trigger_words) or "(none: the LoRA needs no trigger word)"
    lines = [
        "Civitai upload wizard: what to paste (civitai.com -> Create -> Upload a model)", "",
        f"Name:               {details.title}",
        "Type:               LoRA",
        f"Base model:         {civitai_base_model(run)}",
        f"Trigger words:      {words}",
        f"Recommended weight: {fmt(details.weight)}   (prompt: <lora:{run.name}:{fmt(details.weight)}>)",
        f"Tags:               {', '.join(details.tags) or '-'}",
        f"License:            {details.license or '(not set in the recipe: the base model license applies)'}",
        f"File:               {run.kohya_file.name}",
        f"  SHA256:           {hashes['sha256'].upper()}",
        f"  AutoV2:           {hashes['autov2'].upper()}",
        *([f"Also upload:        {run.embedding_name} (the trigger word's trained embedding: the LoRA draws",
           "                    its concept with it; say in the description that it goes in the embeddings",
           "                    folder, A1111/Forge `embeddings/`, ComfyUI `models/embeddings/`)"] if run.embedding_file else []),
        "", "Description:", details.description or "-", "",
        "Training settings:",
        *[f"  {label}: {value}" for label, value in training_settings(run, details)],
        "",
        "Images: drag the PNGs from previews/ into the wizard; their generation data (prompt, seed,",
        "sampler, CFG, LoRA weight) is read from each file's A1111 `parameters` text.",
    ]
    return "\n".join(lines) + "\n"


def _zip_time(run: Run) -> tuple:
    # Fixed timestamps (the end of training) make the zip reproducible for the same run.
    ts = run.summary.training_finished_at
    try:
        when = datetime.datetime.fromtimestamp(float(ts), datetime.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return (1980, 1, 1, 0, 0, 0)
    return max((when.year, when.month, when.day, when.hour, when.minute, when.second), (1980, 1, 1, 0, 0, 0))


def _write_zip(folder: Path, names: list[str], out_zip: Path, date_time: tuple) -> None:
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w") as zf:
            for name in tqdm(names, desc="civitai zip", unit="file", disable=None):
                info = zipfile.ZipInfo(name, date_time)
                # Weights and PNGs are already compressed as far as they go; text is deflated.
                info.compress_type = zipfile.ZIP_STORED if name.endswith((".safetensors", ".png")) else zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with open(folder / name, "rb") as src, zf.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)

    atomic_write(out_zip, write)
