"""The wheel carries recipes/ and datasets/, and builtin: paths resolve from an installed copy."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "lora_kit").rglob("__init__.py")}
    assert found - listed == set()


def test_wheel_ships_recipes_and_datasets_and_they_resolve(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("lora_kit-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    assert "lora_kit/_recipes/tiny-smoke.toml" in names
    assert any(n.startswith("lora_kit/_datasets/shapes-star/10_star/") and n.endswith(".png") for n in names)
    code = ("from lora_kit.paths import resolve_dataset_path, resolve_recipe_path;"
            "print(resolve_dataset_path('builtin:shapes-star'));print(resolve_recipe_path('tiny-smoke'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0].startswith(str(site)) and Path(out[0]).is_dir()
    assert out[1].startswith(str(site)) and Path(out[1]).is_file()
