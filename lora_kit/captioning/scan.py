"""Finding a dataset's images for captioning: the same layout and record as training (lora_kit.data.layout).

kohya's DreamBooth layout is `<root>/<N>_<class tokens>/image.png`: N is the repeat count and the rest
the class tokens ("10_sks star" -> 10 repeats, "sks star"). The captioner sees exactly the images the
trainer would read from the same folder (regular, non-hidden image files; `0_name` folders left out),
in the same stable order, as `ImageRecord`s (`ImageItem` is the same type).
"""

from __future__ import annotations

import os
from pathlib import Path

from lora_kit.data.layout import ImageRecord, SkipFn, find_images, parse_kohya_folder, record_for, warn_skip
from lora_kit.errors import UserError

ImageItem = ImageRecord  # the captioning API's name for a dataset image; one record type for both

__all__ = ["ImageItem", "make_item", "parse_kohya_folder", "scan_dataset"]


def make_item(root: Path, path: Path) -> ImageItem:
    """The record of one image below `root` (class tokens and repeats from its kohya folder)."""
    return record_for(root, path)


def scan_dataset(root: str | os.PathLike, extension: str = ".txt", on_skip: SkipFn = warn_skip) -> list[ImageItem]:
    """Every image under `root` (recursively), with the caption training would read (`extension` first);
    FIFOs, devices and links that lead nowhere are reported through `on_skip`."""
    root = require_dataset_folder(Path(root))
    return find_images(root, extension, on_skip=on_skip)


def require_dataset_folder(root: Path) -> Path:
    """`root`, or one line saying whether it is missing or a file."""
    if root.is_file():
        raise UserError(f"{root} is a file; expected a dataset folder (images with their caption files)")
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    return root
