"""Where the embedded assets live, from any working directory and after a non-editable install.

`builtin:NAME` in a recipe or on the command line names something shipped with lora-kit:
- a dataset folder under the top-level `datasets/` (installed as the package `lora_kit._datasets`);
- a recipe under `recipes/` (installed as `lora_kit._recipes`);
- a model preset (`builtin:tiny-sd15` …), materialised on first use under the user cache
  (see lora_kit.models.loading.resolve_model);
- CLIP's BPE vocabulary (`CLIP_BPE_FILE`), from which lora_kit.models.tokenizer builds tokenizers;
- the trained tiny world's weights (`builtin:tiny-world`, its ControlNet), shipped in the package under
  lora_kit/world/weights/<name>/ (`shipped_model_dir`, `shipped_controlnet_dir`).
The lookup lives here, below every other package, so that `models` (which resolves `builtin:` names) and
`world` (which builds the tiny world from `models` pieces) never import each other both ways.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

BUILTIN_PREFIX = "builtin:"
# diffusers' LORA_WEIGHT_NAME_SAFE: the diffusers-format file every run writes beside <name>.safetensors (here, not in
# adapters.io, so that recipe checks can name it without importing torch)
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = Path(__file__).resolve().parent / "world" / "weights"
# CLIP's BPE merges (MIT, see models/assets/NOTICE.md): a real CLIP tokenizer offline, no extra install.
CLIP_BPE_FILE = Path(__file__).resolve().parent / "models" / "assets" / "bpe_simple_vocab_16e6.txt.gz"
CONTROLNET = "tiny-world-controlnet"


def _package_dir(package: str, repo_folder: str) -> Path:
    # A checkout (editable install or plain PYTHONPATH) has the folder beside the package; a wheel
    # has it inside as a sub-package (pyproject maps recipes/ and datasets/ into lora_kit).
    here = _REPO_ROOT / repo_folder
    if here.is_dir() and (_REPO_ROOT / "pyproject.toml").is_file():
        return here
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"lora-kit's {repo_folder}/ folder is not installed (package {package})")
    return Path(list(spec.submodule_search_locations)[0])


def datasets_dir() -> Path:
    return _package_dir("lora_kit._datasets", "datasets")


def recipes_dir() -> Path:
    return _package_dir("lora_kit._recipes", "recipes")


def cache_dir() -> Path:
    """User cache for generated models and caches (LORA_KIT_CACHE overrides)."""
    env = os.environ.get("LORA_KIT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lora-kit"


def is_builtin(value: str) -> bool:
    return isinstance(value, str) and value.startswith(BUILTIN_PREFIX)


def builtin_name(value: str) -> str:
    return value[len(BUILTIN_PREFIX):]


def resolve_dataset_path(value: str) -> Path:
    """`builtin:shapes-star` → the shipped folder; anything else is a normal path."""
    if is_builtin(value):
        return datasets_dir() / builtin_name(value)
    return Path(value).expanduser()


def resolve_recipe_path(value: str) -> Path:
    """A recipe argument: a path, or the name of a shipped recipe (`tiny-smoke`, `builtin:tiny-smoke`)."""
    name = builtin_name(value) if is_builtin(value) else value
    p = Path(name).expanduser()
    if p.exists() and not is_builtin(value):
        return p
    shipped = recipes_dir() / (name if name.endswith(".toml") else f"{name}.toml")
    if shipped.exists():
        return shipped
    return p


def shipped_model_dir(name: str) -> Path | None:
    """A shipped pipeline folder (has model_index.json), or None."""
    p = WEIGHTS_DIR / name
    return p if (p / "model_index.json").exists() else None


def shipped_controlnet_dir(name: str = CONTROLNET) -> Path | None:
    """A shipped ControlNetModel folder (has config.json), or None."""
    p = WEIGHTS_DIR / name
    return p if (p / "config.json").exists() else None
