"""Finding a dataset's images, with what kohya reads from their folder names.

kohya's DreamBooth layout is `<root>/<N>_<class tokens>/image.png`: N is the repeat count and the
rest the class tokens ("10_sks star" -> 10 repeats, "sks star"). Folders are walked recursively in a
stable order so that batches, dry runs and `--max-images` always pick the same images.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lora_kit.data.images import is_image_file
from lora_kit.errors import UserError

_KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")


def parse_kohya_folder(name: str) -> tuple[int | None, str]:
    """"10_sks star" -> (10, "sks star"); a folder without the N_ prefix -> (None, name)."""
    m = _KOHYA_FOLDER.match(name)
    if m is None:
        return None, name
    return int(m.group(1)), m.group(2).strip()


@dataclass(frozen=True)
class ImageItem:
    """One image of a dataset. `rel` is its POSIX path relative to the dataset root."""

    path: Path
    rel: str
    folder: str  # the containing folder's name, kohya repeat prefix removed
    class_tokens: str  # of the nearest kohya `N_name` folder above the image, else ""
    repeats: int  # of that folder; 1 outside kohya folders

    @property
    def stem(self) -> str:
        return self.path.stem


def make_item(root: Path, path: Path) -> ImageItem:
    _, folder = parse_kohya_folder(path.parent.name)
    # An image in a subfolder of `10_sks star/` still belongs to that concept (kohya's recursive mode).
    # The dataset root itself may be a kohya folder too, so it is checked last.
    repeats, class_tokens = None, ""
    for name in [*reversed(path.parent.relative_to(root).parts), root.name]:
        repeats, tokens = parse_kohya_folder(name)
        if repeats is not None:
            class_tokens = tokens
            break
    return ImageItem(path=path, rel=path.relative_to(root).as_posix(), folder=folder, class_tokens=class_tokens,
                     repeats=repeats or 1)


def scan_dataset(root: str | os.PathLike) -> list[ImageItem]:
    """Every image under `root` (hidden files and folders skipped), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_file(name):
                items.append(make_item(root, Path(dirpath) / name))
    return sorted(items, key=lambda it: it.rel)
