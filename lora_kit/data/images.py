"""Reading images the way training needs them: EXIF-rotated RGB, bad files skipped and counted.

Pillow does the decoding; what it lacks is the policy: one warning per unreadable file, a count at the
end, alpha composited on white (not black, which is what a bare `convert("RGB")` gives for RGBA),
16-bit and CMYK handled, header-only size reads for fast bucketing, and a check that a PNG holds as much
pixel data as its header claims (Pillow fills a zlib stream that ends early with black, silently).
What counts as an image file is `lora_kit.data.layout`'s rule.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

log = logging.getLogger(__name__)

# EXIF orientations that swap width and height (5..8 are the 90/270-degree ones).
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


@dataclass
class SkipCounter:
    """Counts skipped files and warns once per file."""

    skipped: dict[str, str] = field(default_factory=dict)
    warn: bool = True  # False for a scan another one repeats (the caption priors' look at the concept set)

    def skip(self, path: str | os.PathLike, reason: str) -> None:
        key = str(path)
        reason = reason.replace(key, Path(key).name)  # Pillow quotes the full path; stats must not carry it
        # ...or, reading from memory, "<_io.BytesIO object at 0x7f...>": an address the user cannot use
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", Path(key).name, reason)
        if key not in self.skipped:
            self.skipped[key] = reason
            if self.warn:
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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_raw_size(w: int, h: int, depth: int, colour: int, interlace: int) -> int:
    """Bytes of filtered scanlines a PNG of this header must inflate to (one filter byte per row)."""
    bits = _PNG_CHANNELS.get(colour, 4) * depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        pw, ph = -(-(w - x0) // dx), -(-(h - y0) // dy)
        if pw > 0 and ph > 0:
            total += ph * (1 + -(-pw * bits // 8))
    return total


def png_shortfall(data: bytes) -> str | None:
    """Why a PNG holds less pixel data than its header claims, or None when it is complete.

    Written by hand because Pillow decodes a zlib stream that ends early without an error and leaves
    the missing rows black (a 60000x2500 header with one row of data "loads"). The IDAT stream is
    inflated in 1 MiB pieces and only counted, so a huge claimed size costs no memory.
    """
    pos, need, got = 8, None, 0
    inflater = zlib.decompressobj()
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR" and len(body) >= 13:
            w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body[:13])
            need = _png_raw_size(w, h, depth, colour, interlace)
        elif kind == b"IDAT":
            try:
                while body and (need is None or got < need):
                    got += len(inflater.decompress(body, 1 << 20))
                    body = inflater.unconsumed_tail
            except zlib.error as exc:
                return f"corrupt pixel data ({exc})"
        elif kind == b"IEND":
            break
        pos += 12 + length
    if need is not None and got < need:
        return f"pixel data ends after {got} of {need} bytes (the header claims more rows than the file holds)"
    return None


def has_alpha(im: Image.Image) -> bool:
    """Whether the image carries transparency (an alpha channel, or a palette/greyscale transparency key)."""
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def alpha_of(im: Image.Image) -> Image.Image | None:
    """The transparency as an 8-bit "L" image (255 = opaque), or None when the image has none."""
    if not has_alpha(im):
        return None
    return im.convert("RGBA").getchannel("A")


def mask_from(im: Image.Image) -> Image.Image:
    """A mask file as an 8-bit "L" image, EXIF-rotated: white trains, black is ignored. A mask saved with
    an alpha channel is read through it (transparent = black), greyscale or colour by luminance."""
    im = ImageOps.exif_transpose(im)
    if has_alpha(im):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("L")
    return im if im.mode == "L" else to_rgb(im).convert("L")  # to_rgb scales 16-bit masks instead of clipping


def load_mask_file(path: str | os.PathLike) -> Image.Image:
    """Decode a `<stem>.mask.png` (see `mask_from`). Raises OSError/ValueError if unreadable."""
    with Image.open(path) as im:
        im.load()
        return mask_from(im)


def load_image(path: str | os.PathLike | io.BytesIO, verify: bool = False) -> Image.Image:
    """Decode fully: EXIF orientation applied, converted to RGB. Raises OSError/ValueError if unreadable.

    `verify` also checks that a PNG's pixel data is as long as its header says (`png_shortfall`); the
    scan or the latent cache does it once per image, so training loads skip the second inflate."""
    return _decode(path, verify, want_alpha=False)[0]


def load_image_and_alpha(path: str | os.PathLike | io.BytesIO, verify: bool = False) -> tuple[Image.Image, Image.Image | None]:
    """`load_image` plus the image's transparency as "L" (None when it has none), from one decode:
    the alpha channel is a masked-loss mask (kohya `alpha_mask`)."""
    return _decode(path, verify, want_alpha=True)


def _decode(path, verify: bool, want_alpha: bool) -> tuple[Image.Image, Image.Image | None]:
    if verify:
        if isinstance(path, io.BytesIO):
            data = path.getvalue()
        else:
            with open(path, "rb") as f:
                data = f.read()
        if data.startswith(_PNG_SIGNATURE) and (why := png_shortfall(data)):
            raise OSError(why)
        path = io.BytesIO(data)
    with Image.open(path) as im:
        im.load()  # force the decode here so truncated files fail now, not later in a worker
        im = ImageOps.exif_transpose(im)
        return to_rgb(im), alpha_of(im) if want_alpha else None


def try_load_image(path: str | os.PathLike, skips: SkipCounter, verify: bool = True) -> Image.Image | None:
    try:
        return load_image(path, verify=verify)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError...)
        skips.skip(path, f"{type(exc).__name__}: {exc}")
        return None


# Truncated files must raise instead of silently returning a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's two-line DecompressionBombWarning (above ~89 megapixels) would break "one line per bad file": an
# image that large is decoded like any other, a lying header is caught by png_shortfall, and past twice
# the limit Pillow raises DecompressionBombError, which skips the file with one line.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
