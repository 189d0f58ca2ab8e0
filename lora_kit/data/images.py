"""Reading images the way training needs them: EXIF-rotated RGB, bad files skipped and counted.

Pillow does the decoding; what it lacks is the policy: one warning per unreadable file, a count at the
end, alpha composited on white (not black, which is what a bare `convert("RGB")` gives for RGBA),
16-bit and CMYK handled, and header-only size reads for fast bucketing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFile, ImageOps

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# EXIF orientations that swap width and height (5..8 are the 90/270-degree ones).
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class SkipCounter:
    """Counts skipped files and warns once per file."""

    skipped: dict[str, str] = field(default_factory=dict)

    def skip(self, path: str | os.PathLike, reason: str) -> None:
        key = str(path)
        if key not in self.skipped:
            self.skipped[key] = reason
            log.warning("skipping unreadable image %s: %s", Path(key).name, reason)

    @property
    def count(self) -> int:
        return len(self.skipped)


def image_size(src) -> tuple[int, int]:
    """(width, height) as displayed, from the header only (no pixel decode), EXIF rotation applied.

    `src` is a path or a binary file object. Pillow's PNG `getexif()` decodes the whole image when no
    EXIF block was seen before the pixel data (42 ms for a 2000x2000 PNG instead of 0.03 ms), so a PNG's
    orientation comes only from an eXIf chunk *before* the image data (where Pillow and cameras write
    it); other formats parse EXIF while opening, so `getexif()` costs nothing for them.
    """
    with Image.open(src) as im:
        w, h = im.size
        try:
            if im.format == "PNG":
                exif = Image.Exif()
                raw = im.info.get("exif")
                if raw:
                    exif.load(raw)
            else:
                exif = im.getexif()
            orientation = exif.get(0x0112, 1)
        except Exception:  # a broken EXIF block must not hide a readable image
            orientation = 1
    return (h, w) if orientation in _TRANSPOSING_ORIENTATIONS else (w, h)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited on white."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping at 255.
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        im = Image.fromarray((arr / top * 255.0).clip(0, 255).astype("uint8"), "L")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode != "RGB":
        return im.convert("RGB")
    return im


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode fully: EXIF orientation applied, converted to RGB. Raises OSError/ValueError if unreadable."""
    with Image.open(path) as im:
        im.load()  # force the decode here so truncated files fail now, not later in a worker
        im = ImageOps.exif_transpose(im)
        return to_rgb(im)


def try_load_image(path: str | os.PathLike, skips: SkipCounter) -> Image.Image | None:
    try:
        return load_image(path)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError...)
        skips.skip(path, f"{type(exc).__name__}: {exc}")
        return None


# Truncated files must raise instead of silently returning a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False
