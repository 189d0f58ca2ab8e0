"""The on-disk dataset layout, defined once for training (`data.sources`) and captioning (`captioning`).

What the captioner writes is what the trainer reads, so both go through this module:

- **What counts as an image**: a *regular* file, not hidden (no leading "."), whose extension is one of
  `IMAGE_EXTENSIONS`. FIFOs, devices, sockets, broken links and symlink loops named like an image or a
  caption are skipped with one warning each: opening a FIFO named `x.png` would block forever.
- **kohya `N_name` folders** (as kohya's `extract_dreambooth_params`: `name.split("_")`): a folder directly
  under the dataset root named `<N>_<class tokens>` repeats its images N times and gives them the class
  tokens (`"10_sks dog"` -> 10, "sks dog"; `"10_"` -> 10, no class tokens). Deeper folders are plain
  folders of their top-level folder (kohya's recursive subsets). Images in the root itself, or in
  subfolders not named `N_name`, use the root's own `N_name` when the root is named so, else the
  recipe's `repeats` / `class_tokens`. A `0_name` folder is not used (one warning).
- **Mask files**: `<stem>.mask.png` beside an image is that image's loss mask (`[loss] masked`), never an
  image of its own: `is_image_file` is false for it, so training, `buckets` and `caption` all skip it.
- **Caption sidecars**: `<stem><caption_extension>` beside the image, else the other of `.txt` /
  `.caption`. The caption is the **first non-empty line**, stripped (kohya reads one line; more lines
  are kept in the file but not used). An empty file counts as no caption.
- **Text encoding** of sidecars and metadata: UTF-8 (with or without BOM); UTF-16 with a BOM (Windows
  Notepad's "Unicode") or without one; anything else is read as Windows-1252 with a warning naming the
  file. NUL characters never reach a caption.
- **metadata.jsonl / .csv / .parquet** (Hugging Face imagefolder): `file_name` relative to the metadata
  file's folder, the caption in `[dataset] caption_column` (`text`). A `file_name` whose first folder is
  an `N_name` folder gets its repeats and class tokens, as the same image would in a kohya tree.
- **Unreadable folders** stop the scan with one line naming the folder (`train`, `buckets` and
  `caption` alike): skipping them would silently drop their images.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from PIL import Image

from lora_kit.config.schema import MAX_REPEATS
from lora_kit.data import hfdisk
from lora_kit.data.images import has_alpha, image_size, load_image, load_image_and_alpha, load_mask_file
from lora_kit.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SIDECAR_EXTENSIONS = (".txt", ".caption")
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
FOLDER_PATTERN = re.compile(r"^(\d+)_(.*)$")  # kohya "10_sks dog": 10 repeats, class tokens "sks dog"


MASK_SUFFIX = ".mask.png"  # <stem>.mask.png: the loss mask of <stem>.<ext> (white = train, black = ignore)


def is_mask_file(name: str | os.PathLike) -> bool:
    return str(name).lower().endswith(MASK_SUFFIX)


def is_image_file(name: str | os.PathLike) -> bool:
    return str(name).lower().endswith(IMAGE_EXTENSIONS) and not is_mask_file(name)


def mask_path(image: str | os.PathLike) -> Path:
    """Where an image's mask file would be: `<stem>.mask.png` in the image's folder."""
    p = Path(image)
    return p.with_name(p.stem + MASK_SUFFIX)


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def parse_kohya_folder(name: str) -> tuple[Optional[int], str]:
    """"10_sks star" -> (10, "sks star"); "10_" -> (10, ""); a folder without the N_ prefix -> (None, name)."""
    m = FOLDER_PATTERN.match(name)
    if m is None:
        return None, name
    return int(m.group(1)), m.group(2).strip()


# ---------------------------------------------------------------------------------------------- record


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset, for training and captioning alike.

    `path` is a file, or for a `save_to_disk` dataset its folder plus `row`/`column`. `size` is None until
    the scan has read the header (captioning does not need it). `rel` is the POSIX path below the
    dataset root (what metadata.jsonl's `file_name` holds)."""

    path: str
    caption: Optional[str]  # None when the image has no caption (the caption transform falls back)
    class_tokens: Optional[str]
    repeats: int
    is_reg: bool
    folder: str  # the top-level folder's *name* (kohya ss_dataset_dirs key), never a full path
    size: Optional[tuple[int, int]]  # (width, height) as displayed, EXIF rotation applied
    row: Optional[int] = None
    column: Optional[str] = None
    rel: str = ""

    @property
    def name(self) -> str:
        return f"{Path(self.path).name}#{self.row}" if self.row is not None else Path(self.path).name

    @property
    def stem(self) -> str:
        return Path(self.path).stem

    @property
    def parent_folder(self) -> str:
        """The name of the image's own folder, repeat prefix removed (the captioner's `{folder}`)."""
        return parse_kohya_folder(Path(self.path).parent.name)[1]

    def read_bytes(self) -> bytes:
        """The encoded image bytes (what the latent cache hashes)."""
        if self.row is None:
            return Path(self.path).read_bytes()
        return hfdisk.row_bytes(self.path, self.column, self.row)

    def stat_key(self) -> Optional[tuple[str, list]]:
        """(path, [size, mtime_ns, ctime_ns, inode]) for files, so content hashes can be memoised; None for
        dataset rows. ctime cannot be set back by copy tools (cp -p, rsync -t), unlike mtime."""
        if self.row is not None:
            return None
        st = os.stat(self.path)
        return os.path.abspath(self.path), [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def load(self, verify: bool = False):
        """Decoded RGB PIL image, EXIF-rotated, alpha on white (lora_kit.data.images.load_image); `verify`
        also checks that the pixel data is as long as the header says (done once, when scanned or cached)."""
        if self.row is None:
            return load_image(self.path, verify=verify)
        return load_image(io.BytesIO(self.read_bytes()), verify=verify)

    def mask_file(self) -> Optional[Path]:
        """The `<stem>.mask.png` beside this image when one exists (dataset rows have none)."""
        if self.row is not None:
            return None
        p = mask_path(self.path)
        return p if p.is_file() else None

    def mask_source(self, decode: bool = False) -> Optional[str]:
        """"file" (a `<stem>.mask.png`), "alpha" (the image has transparency; header only) or None.
        A mask file must have the image's size as displayed (one line naming both otherwise); `decode`
        also decodes it fully now (pixel mode, where a damaged mask would otherwise fail mid-run)."""
        mfile = self.mask_file()
        if mfile is not None:
            try:
                msize = load_mask_file(mfile).size if decode else image_size(mfile)
            except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError...
                raise UserError(f"cannot read mask {mfile.name}: {exc}") from None
            if self.size is not None and tuple(msize) != tuple(self.size):
                raise UserError(f"mask {mfile.name} is {msize[0]}x{msize[1]} but its image {self.name} is "
                                f"{self.size[0]}x{self.size[1]}: a mask must have its image's size")
            return "file"
        src = self.path if self.row is None else io.BytesIO(self.read_bytes())
        with Image.open(src) as im:
            return "alpha" if has_alpha(im) else None

    def load_mask(self):
        """The "L" mask alone: the mask file (no image decode) or the image's alpha, or None."""
        mfile = self.mask_file()
        if mfile is not None:
            return load_mask_file(mfile)
        return load_image_and_alpha(self.path if self.row is None else io.BytesIO(self.read_bytes()))[1]

    def load_with_mask(self, verify: bool = False):
        """(RGB image, "L" mask or None): the mask file when there is one, else the image's alpha channel,
        else None (a full mask). A mask file must have the image's size (as displayed)."""
        src = self.path if self.row is None else io.BytesIO(self.read_bytes())
        image, alpha = load_image_and_alpha(src, verify=verify)
        mfile = self.mask_file()
        if mfile is None:
            return image, alpha
        mask = load_mask_file(mfile)
        if mask.size != image.size:
            raise UserError(f"mask {mfile.name} is {mask.size[0]}x{mask.size[1]} but its image {self.name} is "
                            f"{image.size[0]}x{image.size[1]}: a mask must have its image's size")
        return image, mask


# ---------------------------------------------------------------------------------------------- text files


def decode_text(data: bytes, name: str) -> str:
    """Caption / metadata bytes -> text, as described in the module docstring.

    Written by hand: captions are a dozen bytes, too short for a statistical charset detector
    (charset_normalizer guesses differently for "café" and "cafés"), so the order is fixed instead.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return _clean(data.decode("utf-16", errors="replace"), name)
    elif (codec := _bomless_utf16(data)) is not None:
        log.warning("%s is UTF-16 without a byte-order mark; read as %s", name, codec)
        return _clean(data.decode(codec, errors="replace"), name)
    try:
        return _clean(data.decode("utf-8"), name)
    except UnicodeDecodeError as exc:
        log.warning("%s is not UTF-8 (byte 0x%02x at %d); read as Windows-1252: save it as UTF-8 to be sure",
                    name, data[exc.start], exc.start)
        return _clean(data.decode("cp1252", errors="replace"), name)


def _bomless_utf16(data: bytes) -> Optional[str]:
    """"utf-16-le"/"-be" when the NULs of mostly-ASCII UTF-16 sit on one byte parity, else None."""
    odd, even = data[1::2].count(0), data[0::2].count(0)
    if len(data) < 2 or len(data) % 2 or max(odd, even) < len(data) // 4 or min(odd, even) > max(odd, even) // 4:
        return None
    return "utf-16-le" if odd > even else "utf-16-be"


def _clean(text: str, name: str) -> str:
    if "\x00" in text:
        log.warning("%s holds NUL characters; they are removed", name)
        text = text.replace("\x00", "")
    return text


def read_text(path: Path, label: str) -> str:
    """A caption or metadata file's text; a permission or I/O error is one line, not a traceback."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UserError(f"cannot read {label}: {exc.strerror or exc}") from None
    return decode_text(data, label)


def first_line(text: str) -> Optional[str]:
    """The caption of a sidecar's text: its first non-empty line, stripped; None for an empty file."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


def sidecar_order(extension: str) -> list[str]:
    """The sidecar extensions looked for, in order: `extension` first, then .txt / .caption."""
    extension = extension if extension.startswith(".") else f".{extension}"
    return [extension] + [e for e in SIDECAR_EXTENSIONS if e != extension]


def read_caption(image: Path, names: set[str], extension: str, label: str = "") -> Optional[str]:
    """The caption of `image` from its sidecar (see `sidecar_order`); `names` are the regular files of its
    folder (one listing per folder instead of a stat per sidecar)."""
    for ext in sidecar_order(extension):
        name = image.stem + ext
        if name in names:
            rel = f"{label}/{name}" if label else name
            return first_line(read_text(image.parent / name, f"caption file {rel}"))
    return None


# ---------------------------------------------------------------------------------------------- walking


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _relevant(name: str) -> bool:
    return is_image_file(name) or name.lower().endswith(SIDECAR_EXTENSIONS)


SkipFn = Callable[[str, str], None]


def warn_skip(path: str, reason: str) -> None:
    log.warning("skipping %s: %s", Path(path).name, reason)


def list_folder(folder: Path, label: str, on_skip: SkipFn = warn_skip) -> tuple[set[str], list[Path]]:
    """(regular file names, sub-folders) of one folder, hidden entries left out.

    Non-regular entries named like an image or a caption are reported through `on_skip` (one line each).
    The file type comes from the directory listing (no stat per file) except for symbolic links.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise UserError(f"cannot read dataset folder {label}: {exc.strerror or exc} "
                        "(fix its permissions, or move it out of the dataset)") from None
    files, dirs = set(), []
    for e in entries:
        if is_hidden(e.name):
            continue
        try:
            if e.is_symlink():
                mode = os.stat(e.path).st_mode  # follows the link; ELOOP / ENOENT for loops and broken links
            elif e.is_file(follow_symlinks=False):
                files.add(e.name)
                continue
            elif e.is_dir(follow_symlinks=False):
                dirs.append(Path(e.path))
                continue
            else:
                mode = e.stat(follow_symlinks=False).st_mode
        except OSError as exc:
            if _relevant(e.name):
                on_skip(e.path, "symlink loop" if exc.errno == errno.ELOOP else f"broken link ({exc.strerror})")
            continue
        if stat.S_ISREG(mode):
            files.add(e.name)
        elif stat.S_ISDIR(mode):
            dirs.append(Path(e.path))
        elif _relevant(e.name):
            on_skip(e.path, f"{_special_kind(mode)}, not a regular file")
    return files, sorted(dirs, key=lambda p: p.name)


def walk(folder: Path, root: Path, recursive: bool, on_skip: SkipFn = warn_skip,
         _ancestors: tuple = ()) -> Iterator[tuple[Path, set[str]]]:
    """(folder, regular file names) for `folder` and, if `recursive`, its sub-folders in name order.

    A folder link that leads back to one of its own ancestors is skipped with one line (it would
    recurse forever)."""
    st = os.stat(folder)
    ident = (st.st_dev, st.st_ino)
    label = _label(folder, root)
    if ident in _ancestors:
        log.warning("skipping folder %s: symlink loop (it leads back to a folder above it)", label)
        return
    files, dirs = list_folder(folder, label, on_skip)
    yield folder, files
    if recursive:
        for sub in dirs:
            yield from walk(sub, root, True, on_skip, _ancestors + (ident,))


def _label(folder: Path, root: Path) -> str:
    """A folder's name for messages: relative to the dataset root, never an absolute path."""
    try:
        rel = folder.relative_to(root).as_posix()
    except ValueError:
        return folder.name
    return root.name if rel == "." else f"{root.name}/{rel}"


def concept_of(first_part: Optional[str], root: Path, repeats: int, tokens: Optional[str]) -> tuple[int, Optional[str], str]:
    """(repeats, class tokens, folder key) of an image whose top-level folder below the root is
    `first_part` (None: the image sits in the root). See the module docstring for the rule."""
    root_n, root_tokens = parse_kohya_folder(root.name)
    if root_n is not None:  # a root named like "10_sks dog" is itself a concept folder
        repeats, tokens = root_n, root_tokens or tokens
    if first_part is None:
        return repeats, tokens, root.name
    n, sub_tokens = parse_kohya_folder(first_part)
    if n is None:
        return repeats, tokens, first_part
    return n, sub_tokens or tokens, first_part


def find_images(root: Path, extension: str = ".txt", repeats: int = 1, tokens: Optional[str] = None,
                is_reg: bool = False, on_skip: SkipFn = warn_skip) -> list[ImageRecord]:
    """Every image of a kohya-style tree under `root`, in a stable order, with its caption
    (sidecar), repeats and class tokens; `size` is left None for the caller to read."""
    root = Path(root)
    out = []
    for folder, names in walk(root, root, True, on_skip):
        rel_dir = folder.relative_to(root)
        first = rel_dir.parts[0] if rel_dir.parts else None
        n, class_tokens, key = concept_of(first, root, repeats, tokens)
        if n < 1:
            if folder.parent == root:
                log.warning("folder %s has 0 repeats: its images are not used", key)
            continue
        if n > MAX_REPEATS:
            raise UserError(f"dataset folder {key}: {n} repeats; expected at most {MAX_REPEATS} (the N of N_name)")
        label = _label(folder, root)
        for fname in sorted(n_ for n_ in names if is_image_file(n_)):
            p = folder / fname
            out.append(ImageRecord(str(p), read_caption(p, names, extension, label), class_tokens, n, is_reg, key,
                                   None, rel=(rel_dir / fname).as_posix()))
    return out  # walk order: a folder's files (by name), then its sub-folders (by name)


def record_for(root: Path, path: Path, repeats: int = 1, tokens: Optional[str] = None) -> ImageRecord:
    """The record of one image path below `root`, without reading its caption (captioning's view)."""
    root, path = Path(root), Path(path)
    rel = path.relative_to(root)
    n, class_tokens, key = concept_of(rel.parts[0] if len(rel.parts) > 1 else None, root, repeats, tokens)
    return ImageRecord(str(path), None, class_tokens, n, False, key, None, rel=rel.as_posix())
