"""Small shared helpers: the one atomic file writer, the one atomic folder swap, write-fault detection.

Every file lora-kit writes goes through `atomic_write` (temp file in the same folder + os.replace) and
every folder it replaces through `swap_dir` / `atomic_dir`, so a crash or a full disk leaves the old
version or the complete new one, never half of either.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

TMP_SUFFIX = ".tmp"
# errno values that mean "the disk/quota/permissions refused the write", not a bug in lora-kit.
WRITE_FAULTS = {errno.ENOSPC, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT}
# torch.save (a C++ stream writer: RuntimeError) and safetensors (Rust: SafetensorError) turn a failed
# write into their own exception types with one of these texts (no errno survives), so they are
# recognised by message.
_NATIVE_WRITE_FAULT = re.compile(r"file write failed|PytorchStreamWriter failed|unexpected pos|No space left|"
                                 r"File too large|Disk quota exceeded|os error (?:13|27|28|30|122)\b")


def nearest_existing(path: str | Path) -> Path:
    """`path` itself or its closest ancestor that exists ("/" at the latest): what a write there would meet
    first. Output checks ask it whether a file stands where a folder must be created."""
    path = Path(path)
    return next((p for p in (path, *path.parents) if p.exists()), Path(path.anchor or "."))


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` then rename over `path`, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a normal file should follow the umask
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def swap_dir(new: str | Path, out: str | Path) -> Path:
    """Move the finished folder `new` to `out`, replacing `out` with no moment where neither exists:
    the old folder is renamed aside, the new one renamed in, then the old one deleted. A crash between
    the two renames leaves the old folder under `.<name>.old.*` beside `out` (and `new` intact)."""
    new, out = Path(new), Path(out)
    aside = None
    if out.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, aside / out.name)
    try:
        os.replace(new, out)
    except BaseException:
        if aside is not None:
            os.replace(aside / out.name, out)  # put the old folder back
            shutil.rmtree(aside, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return out


def atomic_dir(out: str | Path, write: Callable[[Path], None]) -> Path:
    """Build a folder with `write(tmp_dir)` beside `out`, then swap it into place (`swap_dir`)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=TMP_SUFFIX, dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
    try:
        write(tmp)
        swap_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def remove_stale_temps(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Delete the temp files/folders `atomic_write`/`atomic_dir`/`swap_dir` leave when killed mid-write
    (`.<name>.*.tmp`, `.<name>.old.*`). Only call it on a folder this process owns (the run lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = "**/.*" if recursive else ".*"
    gone = []
    for p in folder.glob(pattern):
        if p.name.endswith(TMP_SUFFIX) or ".old." in p.name:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def is_write_fault(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) is the disk refusing a write: full, over a size limit or
    quota, read-only or not permitted."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in WRITE_FAULTS:
            return True
        native = isinstance(exc, RuntimeError) or type(exc).__name__ == "SafetensorError"
        if native and _NATIVE_WRITE_FAULT.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def describe_write_fault(exc: BaseException) -> str:
    """'disk full' / 'file size limit reached' / 'permission denied' for a write fault."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in WRITE_FAULTS:
            return {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file size limit reached",
                    errno.EROFS: "read-only file system"}.get(exc.errno, "permission denied")
        text = str(exc)
        for needle, what in (("File too large", "file size limit reached"), ("os error 27", "file size limit reached"),
                             ("No space left", "disk full"), ("os error 28", "disk full")):
            if needle in text:
                return what
        exc = exc.__cause__ or exc.__context__
    return "disk full or file size limit reached"


def save_pretrained_atomic(obj, out: str | Path) -> Path:
    """`obj.save_pretrained` (a diffusers pipeline or model) into `out`, atomically."""
    return atomic_dir(out, lambda tmp: obj.save_pretrained(tmp, safe_serialization=True))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def write(p: Path) -> None:
        with open(p, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible

    return atomic_write(path, write)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
