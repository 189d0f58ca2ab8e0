"""Finding the training images: kohya `N_name` folders, Hugging Face imagefolder, `save_to_disk` datasets.

`scan_dataset` returns one `ImageRecord` per usable image, sorted, with its caption, repeats and displayed
size (EXIF-aware, from the header only). Unreadable files are skipped with one warning each and counted;
only an empty result is an error.

Truncation check without decoding: a header read does not see a cut-off file, and a full decode of every
image would make scanning 100k images take minutes. So the scan reads the *tail* of the file (PNG must end
with the IEND chunk, JPEG with the EOI marker, GIF with ';', WebP's RIFF size must match) and fully
decodes only the files whose tail looks wrong — a JPEG with trailing data after EOI is kept if it decodes.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

from lora_kit.config.schema import DatasetConfig
from lora_kit.data.images import SkipCounter, image_size, is_image_file, load_image
from lora_kit.errors import UserError
from lora_kit.paths import resolve_dataset_path

log = logging.getLogger(__name__)

FOLDER_PATTERN = re.compile(r"^(\d+)_(.*)$")  # kohya "10_sks dog": 10 repeats, class tokens "sks dog"
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
_SIDECARS = (".txt", ".caption")
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


@dataclass(frozen=True)
class ImageRecord:
    """One usable image. `path` is a file, or for a `save_to_disk` dataset its folder plus `row`/`column`."""

    path: str
    caption: Optional[str]  # None when the image has no caption (the caption transform falls back)
    class_tokens: Optional[str]
    repeats: int
    is_reg: bool
    folder: str  # folder *name* (kohya ss_dataset_dirs key), never a full path
    size: tuple[int, int]  # (width, height) as displayed, EXIF rotation applied
    row: Optional[int] = None
    column: Optional[str] = None

    @property
    def name(self) -> str:
        return f"{Path(self.path).name}#{self.row}" if self.row is not None else Path(self.path).name

    def read_bytes(self) -> bytes:
        """The encoded image bytes (what the latent cache hashes)."""
        if self.row is None:
            return Path(self.path).read_bytes()
        return _row_bytes(self.path, self.column, self.row)

    def stat_key(self) -> Optional[tuple[str, list]]:
        """(path, [size, mtime_ns, ctime_ns, inode]) for files, so content hashes can be memoised; None for
        dataset rows. ctime cannot be set back by copy tools (cp -p, rsync -t), unlike mtime."""
        if self.row is not None:
            return None
        st = os.stat(self.path)
        return os.path.abspath(self.path), [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def load(self):
        """Decoded RGB PIL image, EXIF-rotated, alpha on white (lora_kit.data.images.load_image)."""
        if self.row is None:
            return load_image(self.path)
        return load_image(io.BytesIO(self.read_bytes()))


@dataclass
class ScanResult:
    records: list[ImageRecord]
    skipped: SkipCounter
    folders: dict[str, dict[str, int]]  # {folder: {"n_repeats": n, "img_count": m}} (kohya ss_dataset_dirs)
    kind: str = "folder"
    missing_captions: int = 0


@dataclass
class _Candidate:
    """An image found on disk (or a dataset row) whose size has not been read yet."""

    path: str
    caption: Optional[str]
    class_tokens: Optional[str]
    repeats: int
    folder: str
    row: Optional[int] = None
    column: Optional[str] = None


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


# ---------------------------------------------------------------------------------------------- kohya folders


def read_caption(image: Path, names: set[str], extension: str) -> Optional[str]:
    """First non-empty line of the sidecar (kohya reads one line); `extension` first, then .txt/.caption."""
    extension = extension if extension.startswith(".") else f".{extension}"
    order = [extension] + [e for e in _SIDECARS if e != extension]
    for ext in order:
        name = image.stem + ext
        if name in names:
            text = (image.parent / name).read_text(encoding="utf-8-sig", errors="replace")
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            return lines[0] if lines else None  # an empty file counts as "no caption"
    return None


def _walk(folder: Path, recursive: bool) -> Iterator[tuple[Path, set[str]]]:
    """(directory, file names) pairs; one listing per directory instead of a stat per sidecar."""
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise UserError(f"cannot read dataset folder {folder.name}: {exc}") from None
    names = {e.name for e in entries if e.is_file()}
    yield folder, names
    if recursive:
        for e in sorted((e for e in entries if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name):
            yield from _walk(Path(e.path), True)


def _images_in(folder: Path, recursive: bool, extension: str, tokens, repeats, name) -> list[_Candidate]:
    out = []
    for directory, names in _walk(folder, recursive):
        for fname in sorted(n for n in names if is_image_file(n) and not n.startswith(".")):
            p = directory / fname
            out.append(_Candidate(str(p), read_caption(p, names, extension), tokens, repeats, name))
    return out


def _folder_candidates(root: Path, cfg: DatasetConfig, repeats: int, tokens: Optional[str]) -> list[_Candidate]:
    """Root images use `repeats`/`tokens`; `N_name` subfolders their own; other subfolders the defaults."""
    cands = _images_in(root, False, cfg.caption_extension, tokens, repeats, root.name)
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for sub in subdirs:
        m = FOLDER_PATTERN.match(sub.name)
        n, sub_tokens = (int(m.group(1)), m.group(2).strip() or tokens) if m else (repeats, tokens)
        if n < 1:
            log.warning("folder %s has 0 repeats: its images are not used", sub.name)
            continue
        cands += _images_in(sub, True, cfg.caption_extension, sub_tokens, n, sub.name)
    return cands


# ---------------------------------------------------------------------------------------------- HF datasets


def _read_metadata(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path.name} line {i + 1}: not valid JSON ({exc.msg})") from None
        return rows
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    import pyarrow.parquet as pq  # installed with `datasets`

    return pq.read_table(path).to_pylist()


def _imagefolder_candidates(root: Path, cfg: DatasetConfig, repeats: int, tokens) -> list[_Candidate]:
    """Hub `imagefolder` layout, read directly.

    Why not `load_dataset("imagefolder")`: it builds a second copy of the table in the HF cache and one
    unreadable file fails the whole build, while we need a per-file skip and header-only sizes. The layout
    is the documented one: metadata.{jsonl,csv,parquet} with a `file_name` column relative to its folder.
    """
    base = _metadata_root(root)
    if base is None:
        raise UserError(f"{root.name}: no metadata.jsonl/metadata.csv found (kind = \"imagefolder\")")
    cands = []
    metas = sorted(p for p in base.rglob("metadata.*") if p.name in METADATA_FILES)
    for meta in metas:
        folder = meta.parent.name
        for row in _read_metadata(meta):
            fname = row.get("file_name")
            if not fname:
                raise UserError(f"{meta.name}: a row has no file_name column")
            caption = row.get(cfg.caption_column)
            caption = str(caption).strip() if caption not in (None, "") else None
            path = meta.parent / str(fname)
            cands.append(_Candidate(str(path), caption, tokens, repeats, folder))
    cands.sort(key=lambda c: c.path)
    return cands


@functools.lru_cache(maxsize=4)
def _open_disk_dataset(path: str, column: str):
    """A `save_to_disk` dataset with its image column left encoded (bytes + path), opened once per process."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        from lora_kit.errors import missing_extra

        raise missing_extra("datasets", purpose="Hugging Face datasets") from None
    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else sorted(ds)[0]
        ds = ds[split]
    if column not in ds.column_names:
        raise UserError(f"{Path(path).name}: no column {column!r} (columns: {', '.join(ds.column_names)})")
    feature = ds.features[column]
    if isinstance(feature, datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds


def _row_bytes(path: str, column: str, row: int) -> bytes:
    value = _open_disk_dataset(path, column)[row][column]
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return Path(value["path"]).read_bytes()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):  # a column of file paths
        return Path(value).read_bytes()
    raise OSError(f"row {row}: column {column!r} holds no image")


def _disk_candidates(root: Path, cfg: DatasetConfig, repeats: int, tokens) -> list[_Candidate]:
    ds = _open_disk_dataset(str(root), cfg.image_column)
    captions = ds[cfg.caption_column] if cfg.caption_column in ds.column_names else [None] * len(ds)
    if cfg.caption_column not in ds.column_names:
        log.warning("%s: no caption column %r; class tokens/trigger word are used", root.name, cfg.caption_column)
    cands = []
    for i, cap in enumerate(captions):
        cap = str(cap).strip() if cap not in (None, "") else None
        cands.append(_Candidate(str(root), cap, tokens, repeats, root.name, row=i, column=cfg.image_column))
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


def _check(c: _Candidate) -> tuple[Optional[tuple[int, int]], Optional[str]]:
    """(size, None) for a usable image, (None, reason) otherwise."""
    try:
        if c.row is not None:
            data = _row_bytes(c.path, c.column, c.row)
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
        if not tail_looks_complete(head, tail, total):
            if c.row is not None:
                src.seek(0)
            load_image(src)  # raises for a truncated file (LOAD_TRUNCATED_IMAGES is off)
        if min(size) < 1:
            return None, f"bad size {size}"
        return size, None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return None, f"{type(exc).__name__}: {exc}"


def _checked(cands: list[_Candidate], limit: int, skips: SkipCounter, workers: int) -> list[tuple[_Candidate, tuple]]:
    """Read sizes with a thread pool (header reads are I/O bound); stop once `limit` usable images exist."""
    out: list[tuple[_Candidate, tuple]] = []
    chunk = 4096 if not limit else max(64, limit)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(cands), chunk):
            part = cands[start:start + chunk]
            for c, (size, reason) in zip(part, pool.map(_check, part)):
                if size is None:
                    skips.skip(c.path if c.row is None else f"{c.path}#{c.row}", reason)
                elif not limit or len(out) < limit:
                    out.append((c, size))
            if limit and len(out) >= limit:
                break
    return out


# ---------------------------------------------------------------------------------------------- entry point


def scan_dataset(cfg: DatasetConfig, reg: bool = False, workers: int = 8) -> ScanResult:
    """Scan `cfg.path` (or `cfg.reg_path` with reg=True) into sorted `ImageRecord`s."""
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
    cands = finder[kind](root, cfg, repeats, tokens)
    skips = SkipCounter()
    limit = 0 if reg else cfg.max_images
    checked = _checked(cands, limit, skips, workers)
    records = [
        ImageRecord(c.path, c.caption, c.class_tokens, c.repeats, reg, c.folder, size, c.row, c.column)
        for c, size in checked
    ]
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
