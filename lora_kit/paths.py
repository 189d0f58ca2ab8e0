"""Where the embedded assets live, from any working directory and after a non-editable install.

`builtin:NAME` in a recipe or on the command line names something shipped with lora-kit:
- a dataset folder under the top-level `datasets/` (installed as the package `lora_kit._datasets`);
- a recipe under `recipes/` (installed as `lora_kit._recipes`);
- a model preset (`builtin:tiny-sd15` …), materialised on first use under the user cache
  (see lora_kit.models.loading.resolve_model).
"""

from __future__ import annotations

import os
from pathlib import Path

BUILTIN_PREFIX = "builtin:"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def _package_dir(package: str, repo_folder: str) -> Path:
    # A checkout (editable install or plain PYTHONPATH) has the folder beside the package; a wheel
    # has it inside as a sub-package (pyproject maps recipes/ and datasets/ into lora_kit).
    here = _REPO_ROOT / repo_folder
    if here.is_dir() and (_REPO_ROOT / "pyproject.toml").is_file():
        return here
    import importlib.util

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
