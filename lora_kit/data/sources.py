"""Finding the training images: kohya `N_name` folders, Hugging Face imagefolder, `save_to_disk` datasets.

The layout rules (what counts as an image, `N_name` folders, sidecars, metadata files, text decoding) are
`lora_kit.data.layout`'s, shared with the captioner. `scan_dataset` returns one `ImageRecord` per usable
image, in a stable order, with its caption, repeats and displayed size (EXIF-aware). Unreadable files are
skipped with one warning each and counted; only an empty result is an error.

Two depths of checking:
- `decode=False` (the latent cache will decode every image once anyway): sizes from the header only, and
  the *tail* of the file (PNG must end with the IEND chunk, JPEG with the EOI marker, GIF with ';', WebP's
  RIFF size must match); only files whose tail looks wrong are decoded, so scanning 100k images stays fast.
  A JPEG with trailing data after EOI is kept if it decodes.
- `decode=True` (no latent cache): every image is fully decoded once here, with the PNG data-length check
  (`images.png_shortfall`), so a lying header is skipped and counted instead of training as black.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from lora_kit.config.schema import DatasetConfig
from lora_kit.data import hfdisk
from lora_kit.data.images import SkipCounter, image_size, load_image
from lora_kit.data.layout import (
    METADATA_FILES, ImageRecord, concept_of, find_images, is_image_file, parse_kohya_folder, read_text, walk,
)
from lora_kit.errors import UserError
from lora_kit.paths import resolve_dataset_path

log = logging.getLogger(__name__)

_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"

__all__ = ["ImageRecord", "ScanResult", "detect_kind", "folder_summary", "scan_dataset", "tail_looks_complete"]


@dataclass
class ScanResult:
    records: list[ImageRecord]
    skipped: SkipCounter
    folders: dict[str, dict[str, int]]  # {folder: {"n_repeats": n, "img_count": m}} (kohya ss_dataset_dirs)
    kind: str = "folder"
    missing_captions: int = 0


# ---------------------------------------------------------------------------------------------- detection


def detect_kind(root: Path) -> str:
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return "hf_disk"
    if _metadata_root(root) is not None:
        return "imagefolder"
    return "folder"


def _metadata_root(root: Path) -> Optional[Path]:
    # A Hub-style imagefolder may keep its training split in train/; other splits are not training data.
    for base in (root, root / "train"):
        if any((base / m).is_file() for m in METADATA_FILES):
            return base
    return None


def _folder_candidates(root: Path, cfg: DatasetConfig, repeats: int, tokens, reg: bool, skips) -> list[ImageRecord]:
    return find_images(root, cfg.caption_extension, repeats, tokens, reg, skips.skip)


# ---------------------------------------------------------------------------------------------- HF datasets


def _read_metadata(path: Path) -> list[dict]:
    label = f"{path.parent.name}/{path.name}"
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(read_text(path, label).splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path.name} line {i + 1}: not valid JSON ({exc.msg})") from None
        return rows
    if path.suffix == ".csv":
        return list(csv.DictReader(io.StringIO(read_text(path, label), newline="")))
    import pyarrow.parquet as pq  # lazy: installed with `datasets`; heavy, and only parquet metadata needs it

    try:
        return pq.read_table(path).to_pylist()
    except OSError as exc:
        raise UserError(f"cannot read {label}: {exc}") from None


def _imagefolder_candidates(root: Path, cfg: DatasetConfig, repeats: int, tokens, reg: bool, skips) -> list[ImageRecord]:
    """Hub `imagefolder` layout, read directly.

    Why not `load_dataset("imagefolder")`: it builds a second copy of the table in the HF cache and one
    unreadable file fails the whole build, while we need a per-file skip and header-only sizes. The layout
    is the documented one: metadata.{jsonl,csv,parquet} with a `file_name` column relative to its folder;
    a first folder named `N_name` gives its repeats and class tokens (layout.concept_of), as in a kohya tree.
    """
    base = _metadata_root(root)
    if base is None:
        raise UserError(f"{root.name}: no metadata.jsonl/metadata.csv found (kind = \"imagefolder\")")
    cands = []
    metas = sorted(p for p in base.rglob("metadata.*") if p.name in METADATA_FILES)
    for meta in metas:
        for row in _read_metadata(meta):
            fname = row.get("file_name")
            if not fname:
                raise UserError(f"{meta.name}: a row has no file_name column")
            caption = row.get(cfg.caption_column)
            caption = (str(caption).replace("\x00", "").strip() or None) if caption is not None else None
            rel = Path(str(fname).replace("\\", "/"))
            first = rel.parts[0] if len(rel.parts) > 1 else None
            n, class_tokens, _ = concept_of(first, meta.parent, repeats, tokens)
            kohya = first is not None and parse_kohya_folder(first)[0] is not None
            folder = first if kohya else meta.parent.name
            if n < 1:
                continue
            path = meta.parent / rel
            if _special(path, skips):
                continue
            cands.append(ImageRecord(str(path), caption, class_tokens, n, reg, folder, None, rel=rel.as_posix()))
    cands.sort(key=lambda c: c.path)
    _warn_unlisted(base, {c.path for c in cands}, skips)
    return cands


def _special(path: Path, skips: SkipCounter) -> bool:
    """A metadata row naming a FIFO or device: skipped and counted (opening it could block forever).
    The folder walk of kohya trees already sees file types; metadata rows need this one stat."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False  # missing: _check reports it
    if stat.S_ISREG(mode):
        return False
    skips.skip(str(path), "not a regular file")
    return True


def _warn_unlisted(base: Path, listed: set[str], skips: SkipCounter, shown: int = 5) -> None:
    """One warning for images on disk that no metadata row lists: an imagefolder trains only listed files."""
    found = [str(folder / n) for folder, names in walk(base, base, True, skips.skip) for n in sorted(names)
             if is_image_file(n)]
    unlisted = [p for p in found if p not in listed]
    if unlisted:
        names = ", ".join(Path(p).relative_to(base).as_posix() for p in unlisted[:shown])
        more = f" and {len(unlisted) - shown} more" if len(unlisted) > shown else ""
        log.warning("%d image(s) in %s are not listed in its metadata file and are not used: %s%s "
                    "(add them to it, or caption them with lora-kit caption --format jsonl)",
                    len(unlisted), base.name, names, more)


def _disk_candidates(root: Path, cfg: DatasetConfig, repeats: int, tokens, reg: bool, skips) -> list[ImageRecord]:
    ds = hfdisk.open_disk_dataset(str(root), cfg.image_column)
    captions = ds[cfg.caption_column] if cfg.caption_column in ds.column_names else [None] * len(ds)
    if cfg.caption_column not in ds.column_names:
        log.warning("%s: no caption column %r; class tokens/trigger word are used", root.name, cfg.caption_column)
    cands = []
    for i, cap in enumerate(captions):
        cap = str(cap).strip() if cap not in (None, "") else None
        cands.append(ImageRecord(str(root), cap, tokens, repeats, reg, root.name, None, row=i,
                                 column=cfg.image_column, rel=f"{root.name}#{i}"))
    return cands


# ---------------------------------------------------------------------------------------------- validation


def tail_looks_complete(head: bytes, tail: bytes, total: int) -> bool:
    """Cheap truncation test on the first and last bytes of an encoded image (False = decode to be sure)."""
    if head.startswith(b"\x89PNG"):
        return tail.endswith(_PNG_END)
    if head.startswith(b"\xff\xd8"):
        return tail.rstrip(b"\x00").endswith(b"\xff\xd9")
    if head.startswith(b"GIF8"):
        return tail.endswith(b";")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return int.from_bytes(head[4:8], "little") + 8 <= total
    return True  # BMP/TIFF: no cheap end marker; Pillow's header read is all we do


def _check(c: ImageRecord, decode: bool) -> tuple[Optional[tuple[int, int]], Optional[str]]:
    """(size, None) for a usable image, (None, reason) otherwise; `decode`: a full decode (see the top)."""
    try:
        if c.row is not None:
            data = hfdisk.row_bytes(c.path, c.column, c.row)
            src, head, tail, total = io.BytesIO(data), data[:16], data[-16:], len(data)
        else:
            src = c.path
            with open(c.path, "rb") as f:
                head = f.read(16)
                total = f.seek(0, os.SEEK_END)
                f.seek(max(0, total - 16))
                tail = f.read(16)
        if total == 0:
            return None, "empty file"
        size = image_size(src)
        if decode or not tail_looks_complete(head, tail, total):
            if c.row is not None:
                src.seek(0)
            load_image(src, verify=decode)  # raises for a truncated file (LOAD_TRUNCATED_IMAGES is off)
        if min(size) < 1:
            return None, f"bad size {size}"
        return size, None
    except FileNotFoundError:
        return None, "file not found"
    except PermissionError:
        return None, "permission denied"
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return None, f"{type(exc).__name__}: {exc}"


def _checked(cands: list[ImageRecord], limit: int, skips: SkipCounter, workers: int, decode: bool) -> list[ImageRecord]:
    """Read sizes with a thread pool (header reads are I/O bound); stop once `limit` usable images exist."""
    out: list[ImageRecord] = []
    chunk = 4096 if not limit else max(64, limit)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(cands), chunk):
            part = cands[start:start + chunk]
            for c, (size, reason) in zip(part, pool.map(lambda c: _check(c, decode), part)):
                if size is None:
                    skips.skip(c.path if c.row is None else f"{c.path}#{c.row}", reason)
                elif not limit or len(out) < limit:
                    out.append(dataclasses.replace(c, size=size))
            if limit and len(out) >= limit:
                break
    return out


# ---------------------------------------------------------------------------------------------- entry point


def scan_dataset(cfg: DatasetConfig, reg: bool = False, workers: int = 8, decode: bool = False,
                 warn: bool = True) -> ScanResult:
    """Scan `cfg.path` (or `cfg.reg_path` with reg=True) into `ImageRecord`s; `decode`: decode every image
    fully now (when no latent cache will), else read headers and tails only; `warn=False`: count unreadable
    files without a warning each (a scan the trainer's own repeats)."""
    raw = cfg.reg_path if reg else cfg.path
    what = "[dataset] reg_path" if reg else "[dataset] path"
    if not raw:
        raise UserError(f"{what} is not set")
    root = resolve_dataset_path(raw)
    if not root.is_dir():
        raise UserError(f"{what}: {raw!r} is not a folder")
    repeats = cfg.reg_repeats if reg else cfg.repeats
    tokens = (cfg.reg_class_tokens if reg else cfg.class_tokens) or None
    kind = detect_kind(root) if cfg.kind == "auto" else cfg.kind
    finder = {"folder": _folder_candidates, "imagefolder": _imagefolder_candidates, "hf_disk": _disk_candidates}
    if kind not in finder:
        raise UserError(f"[dataset] kind: expected auto, folder, imagefolder or hf_disk, got {kind!r}")
    skips = SkipCounter(warn=warn)
    cands = finder[kind](root, cfg, repeats, tokens, reg, skips)
    limit = 0 if reg else cfg.max_images
    records = _checked(cands, limit, skips, workers, decode)
    if not records:
        extra = f" ({skips.count} unreadable)" if skips.count else ""
        raise UserError(f"{what}: no usable image in {raw!r}{extra}")
    return ScanResult(records, skips, folder_summary(records), kind, sum(r.caption is None for r in records))


def folder_summary(records: Iterable[ImageRecord]) -> dict[str, dict[str, int]]:
    """kohya's ss_dataset_dirs: {folder name: {"n_repeats": n, "img_count": m}}."""
    out: dict[str, dict[str, int]] = {}
    for r in records:
        entry = out.setdefault(r.folder, {"n_repeats": r.repeats, "img_count": 0})
        entry["img_count"] += 1
    return out
