"""The Hugging Face Hub target: assemble a model repo folder from a run, then upload it with huggingface_hub.

Folder layout (what `upload_folder` sends, nothing else):
    README.md                          model card (YAML front matter + usage + settings + samples)
    pytorch_lora_weights.safetensors   diffusers format (`pipe.load_lora_weights(repo_id)`)
    <name>.safetensors                 kohya format with ss_*/modelspec.* metadata (A1111, ComfyUI)
    embeddings/<trigger>.safetensors   the trigger word's embedding, when trained with it (pivotal tuning)
    images/grid.png, images/NN-*.png   the newest sample grid and the widget images
The folder is built beside its destination, checked for private data, then moved into place, so a failed
or refused build never leaves a half-written folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.utils import HFValidationError, validate_repo_id

from lora_kit.errors import UserError
from lora_kit.publish import privacy, stage
from lora_kit.publish.card import Widget, render_card
from lora_kit.publish.rundir import DIFFUSERS_FILE, Run
from lora_kit.publish.settings import Details
from lora_kit.utils import atomic_dir, atomic_write_text

MAX_WIDGETS = 8


def default_folder(run: Run) -> Path:
    return run.root / "publish" / "hub"


def assemble_hub_folder(run: Run, details: Details, repo_id: str, out: Path, *, replace: bool = False) -> Path:
    """Write the repo folder at `out`; an existing non-empty `out` is replaced only with `replace`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not replace:
        raise UserError(f"{out} exists and is not empty; pass --overwrite to replace it")

    def build(staging: Path) -> None:
        _fill(run, details, repo_id, staging)
        privacy.check_folder(staging, stage.private_roots(run, out))  # refused: atomic_dir drops staging

    return atomic_dir(out, build)


def _fill(run: Run, details: Details, repo_id: str, folder: Path) -> None:
    privacy.copy_safetensors(run.kohya_file, folder / run.kohya_file.name)
    if run.diffusers_file is not None:
        privacy.copy_safetensors(run.diffusers_file, folder / DIFFUSERS_FILE)
    if run.embedding_file is not None:
        privacy.copy_safetensors(run.embedding_file, folder / run.embedding_name)
    widgets, grid_url = [], None
    if run.samples is not None:
        if run.samples.grid is not None:
            privacy.copy_png(run.samples.grid, folder / "images" / "grid.png")
            grid_url = "images/grid.png"
        for i, cell in enumerate(stage.cells_at_weight(run, details.weight)[:MAX_WIDGETS], start=1):
            rel = f"images/{i:02d}-seed{cell.seed if cell.seed is not None else 0}.png"
            privacy.copy_png(cell.path, folder / rel, {"parameters": stage.cell_parameters(run, cell)})
            widgets.append(Widget(privacy.scrub_text(cell.prompt), rel, privacy.scrub_text(cell.negative_prompt)))
    atomic_write_text(folder / "README.md", render_card(run, details, repo_id, widgets, grid_url))


def list_files(folder: Path) -> list[tuple[str, int]]:
    return [(p.relative_to(folder).as_posix(), p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()]


# ------------------------------------------------------------------------------------------------ upload


def hub_endpoint() -> str:
    """HF_ENDPOINT read now: huggingface_hub reads it once at import, which would ignore a later change
    (and takes an empty HF_ENDPOINT literally, which breaks every URL)."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT or "https://huggingface.co").rstrip("/")


def check_repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UserError(f"--hub {repo_id!r}: {exc}") from exc
    return repo_id


def upload(folder: Path, repo_id: str, *, private: bool = False, revision: str | None = None,
           commit_message: str = "Upload LoRA with lora-kit") -> str:
    """create_repo(exist_ok) + upload_folder; returns the commit URL. The token is huggingface_hub's own
    (HF_TOKEN or `hf auth login`), never read or stored by lora-kit."""
    # lazy: huggingface_hub's HTTP client (~0.4 s) loads only for an actual upload, not --dry-run or civitai
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if not get_token():
        raise UserError("not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN (or use --dry-run)")
    api = HfApi(endpoint=hub_endpoint())
    try:
        # private=None keeps the namespace's default visibility; --private asks for a private repo.
        url = api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            # upload_folder needs the branch to exist; create_branch starts it from main.
            api.create_branch(url.repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=url.repo_id, repo_type="model",
                                 revision=revision or None, commit_message=commit_message)
    except OfflineModeIsEnabled as exc:
        raise UserError("HF_HUB_OFFLINE is set: unset it to upload, or use --dry-run") from exc
    except HfHubHTTPError as exc:
        raise UserError(f"the Hub refused the upload: {_first_line(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - connection failures come from the HTTP library underneath
        if isinstance(exc, OSError) or any(c.__name__ == "TransportError" for c in type(exc).__mro__):
            raise UserError(f"cannot reach the Hub at {hub_endpoint()}: {_first_line(exc)}") from exc
        raise
    return info.commit_url


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return re.sub(r"\s+", " ", text[0]) if text else type(exc).__name__
