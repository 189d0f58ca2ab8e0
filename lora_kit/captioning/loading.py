"""Loading captioning models from a local folder or a Hub id, with an actionable error when offline.

transformers and huggingface_hub raise OSError / LocalEntryNotFoundError with long texts when a model
is neither local nor cached and the Hub is unreachable (or HF_HUB_OFFLINE=1); the user needs one line
saying what to download.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from lora_kit.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not Path(name).exists()


def not_available(name: str, what: str, files: str = "", exc: BaseException | None = None) -> UserError:
    if looks_like_hub_id(name):
        cmd = f"hf download {name}" + (f" {files}" if files else "")
        return UserError(f"{what} {name!r} is not available offline: download it first with `{cmd}` "
                         "(or pass a local folder)")
    why = f": {_first_line(exc)}" if exc else ""
    return UserError(f"cannot load {what} from {name!r}{why}")


def load_pretrained(loader: Callable[..., Any], name: str, what: str, **kwargs: Any) -> Any:
    """`loader(name, **kwargs)` (a from_pretrained), a missing model turned into a UserError."""
    if not Path(name).exists() and not looks_like_hub_id(name):
        raise UserError(f"{what} folder not found: {name}")
    try:
        return loader(name, **kwargs)
    except OSError as exc:  # not local, not cached, offline: transformers wraps hub errors into OSError
        if Path(name).exists():
            raise UserError(f"cannot load {what} from {name}: {_first_line(exc)}") from None
        raise not_available(name, what, exc=exc) from None
    except ValueError as exc:  # found, but not a model of the expected kind ("Unrecognized configuration class")
        raise UserError(f"cannot load {what} {name}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def hub_files(name: str, filenames: list[str], what: str) -> Path:
    """A folder holding `filenames`: `name` itself if it is a folder, else the Hub snapshot of it."""
    p = Path(name)
    if p.is_dir():
        missing = [f for f in filenames if not (p / f).is_file()]
        if missing:
            raise UserError(f"{what} folder {name} lacks {', '.join(missing)}")
        return p
    if not looks_like_hub_id(name):
        raise UserError(f"{what} folder not found: {name}")
    from huggingface_hub import snapshot_download  # lazy: the Hub download client, only for a Hub id

    try:
        folder = Path(snapshot_download(name, allow_patterns=filenames))
    except Exception as exc:  # LocalEntryNotFoundError offline, HTTP errors online: all mean "get it first"
        raise not_available(name, what, " ".join(filenames), exc) from None
    if not all((folder / f).is_file() for f in filenames):
        raise not_available(name, what, " ".join(filenames))
    return folder


def pick_device(device: str | None = None) -> str:
    """"auto"/None: the GPU when there is one, else the CPU."""
    import torch  # lazy: this module serves the torch-free `template`/`tagger` backends too

    if device and device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(device: str, dtype: str | None = None):
    """"auto"/None: bf16 (or fp16) on a GPU, fp32 on the CPU (half precision is slow or unsupported there)."""
    # lazy: torch (precision imports it too), only for the model backends that call this
    import torch

    from lora_kit.precision import runtime_dtype

    gpu = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float16
    return runtime_dtype(dtype, device, gpu_default=gpu)
