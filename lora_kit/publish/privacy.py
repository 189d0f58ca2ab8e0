"""Nothing local or secret leaves the machine: scrubbed copies of the published files, then a final check.

Two layers. (1) Every file is rewritten on the way out: safetensors metadata and PNG text chunks go
through `scrub_text` (absolute paths -> their last component, token-looking values removed, via
lora_kit.adapters.metadata.scrub_paths for whole values). (2) Before anything is uploaded or zipped,
`check_folder` scans every file for the local roots of this machine (home, working folder, temp folder,
the run folder and its parents) and for the access tokens in the environment, and refuses to go on.

The safetensors header is edited by hand because safetensors has no API to change metadata without
loading and re-saving the tensors; editing only the header keeps the tensor bytes (and so kohya's
`sshs_model_hash`, a hash of the tensor data) identical.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path

from huggingface_hub import get_token
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors.torch import load_file

from lora_kit.adapters.hashes import precalculate_hashes
from lora_kit.adapters.metadata import RECIPE_KEY, scrub_paths, scrub_recipe
from lora_kit.errors import UserError
from lora_kit.utils import atomic_write

# An absolute path inside a longer text: a root (`/`, `~/`, `C:\`) and at least two components. The
# look-behind keeps URLs (`https://host/a/b`), fractions (`1/2`) and relative paths (`models/Lora`) intact.
_ABS_PATH = re.compile(
    r"(?:file://|(?<![\w.:/\\~<>-]))(?:[A-Za-z]:[\\/]+|~[\\/]+|/)(?:[^\s\"'<>|*?:\\/,;()\[\]{}]+[\\/]+)+([^\s\"'<>|*?:\\/,;()\[\]{}]*)"
)
_TOKEN_IN_TEXT = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "HF_API_TOKEN", "CIVITAI_API_KEY",
             "CIVITAI_API_TOKEN", "CIVITAI_TOKEN")


def scrub_text(text: str) -> str:
    """`text` with absolute paths reduced to their last component and Hub tokens removed."""
    whole = scrub_paths(text)
    if whole != text:
        return str(whole)

    def last(m: re.Match) -> str:
        parts = [p for p in re.split(r"[\\/]+", m.group(0)) if p]
        return parts[-1] if parts else ""

    return _TOKEN_IN_TEXT.sub("<removed>", _ABS_PATH.sub(last, text))


def scrub_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """safetensors metadata with secret-named keys dropped and every value scrubbed; the embedded recipe
    also loses its relative locations (files trained before lora-kit scrubbed them at export)."""
    kept = scrub_paths({k: "" for k in metadata})  # drops keys named like token/password/api_key
    out = {k: scrub_text(str(v)) for k, v in metadata.items() if k in kept}
    if RECIPE_KEY in out:
        try:
            out[RECIPE_KEY] = json.dumps(scrub_recipe(json.loads(out[RECIPE_KEY])), ensure_ascii=False, sort_keys=True)
        except ValueError:
            out.pop(RECIPE_KEY)  # not JSON: nothing a reader could use, and it might hold anything
    return out


# --------------------------------------------------------------------------------------- safetensors


def read_safetensors_header(path: str | Path) -> tuple[dict, int]:
    """(header dict, data offset) of a .safetensors file, reading only the header."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n <= 1 or n > 100_000_000:
            raise UserError(f"{Path(path).name}: not a safetensors file")
        return json.loads(f.read(n)), 8 + n


def copy_safetensors(src: Path, dst: Path, transform=scrub_metadata) -> dict[str, str]:
    """Copy `src` to `dst` with `transform(metadata)` as its metadata; tensor bytes copied verbatim.

    Returns the new metadata. kohya's `sshs_legacy_hash` depends on the ss_* header, so it is recomputed
    (the kohya way, lora_kit.adapters.hashes) when scrubbing changed an ss_* value.
    """
    header, offset = read_safetensors_header(src)
    old = header.pop("__metadata__", None) or {}
    new = transform(dict(old))
    if "sshs_legacy_hash" in old and _ss(old) != _ss(new):
        new["sshs_model_hash"], new["sshs_legacy_hash"] = _kohya_hashes(src, new)
    if new:
        header = {"__metadata__": new, **header}
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the safetensors writer pads the header to 8 bytes with spaces
    def write(tmp: Path) -> None:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            fout.write(struct.pack("<Q", len(blob)) + blob)
            fin.seek(offset)
            shutil.copyfileobj(fin, fout, 1 << 20)

    atomic_write(dst, write)
    return new


def _ss(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if k.startswith("ss_")}


def _kohya_hashes(src: Path, metadata: dict) -> tuple[str, str]:
    return precalculate_hashes(load_file(str(src)), metadata)


# ----------------------------------------------------------------------------------------------- PNG


def copy_png(src: Path, dst: Path, extra_text: dict[str, str] | None = None) -> dict[str, str]:
    """Re-save a PNG keeping only its text chunks (scrubbed; `extra_text` replaces or adds chunks):
    EXIF/XMP and other chunks are dropped."""
    with Image.open(src) as im:
        im.load()
        text = {k: scrub_text(str(v)) for k, v in (getattr(im, "text", {}) or {}).items()}
        text.update({k: scrub_text(v) for k, v in (extra_text or {}).items()})
        info = PngInfo()
        for key, value in text.items():
            info.add_itxt(key, value) if not value.isascii() else info.add_text(key, value)
        atomic_write(dst, lambda tmp: im.save(tmp, format="PNG", pnginfo=info))
    return text


# ---------------------------------------------------------------------------------------------- check


def local_roots(*extra: str | Path) -> list[str]:
    """Absolute paths of this machine that must never appear in a published byte."""
    roots = {str(Path.home()), os.getcwd(), tempfile.gettempdir(), *(str(e) for e in extra if e)}
    out = set()
    for root in roots:
        p = Path(root).expanduser()
        if not p.is_absolute():
            p = Path.cwd() / p  # a relative run folder ("runs/x") is a location here, not text to look for
        for q in [p, *p.parents]:
            if len(str(q)) >= 4:  # "/" and one-letter roots would match anything
                out.add(str(q))
        try:
            out.add(str(p.resolve()))
        except OSError:
            pass
    return sorted(out, key=len, reverse=True)


def secrets() -> list[str]:
    """Access tokens this process could see (environment and the huggingface_hub login)."""
    found = [os.environ.get(k, "") for k in TOKEN_ENV]
    try:
        found.append(get_token() or "")
    except Exception:  # noqa: BLE001 - no login is not an error here
        pass
    return sorted({s.strip() for s in found if len(s.strip()) >= 8})


def _texts(path: Path) -> list[str]:
    """The parts of a file where a path could hide: metadata and text, not compressed pixels or tensors."""
    if path.suffix == ".safetensors":
        header, _ = read_safetensors_header(path)
        meta = header.pop("__metadata__", None) or {}
        # Metadata values themselves (one JSON level less than the header), so escaped paths still match.
        return [json.dumps(header, ensure_ascii=False), *map(str, meta), *map(str, meta.values())]
    if path.suffix == ".png":
        with Image.open(path) as im:
            im.load()
            return [f"{k}\n{v}" for k, v in (getattr(im, "text", {}) or {}).items()]
    return [path.read_bytes().decode("utf-8", errors="replace")]


def find_leaks(folder: Path, roots: list[str], tokens: list[str]) -> list[str]:
    """['relative/file: what'] for every file that holds a local root or a token (the token is not shown)."""
    # A root may also appear JSON-escaped (Windows backslashes doubled inside a JSON metadata value).
    patterns = [re.compile(r"(?<![\w.])(?:" + "|".join({re.escape(r), re.escape(json.dumps(r)[1:-1])}) + r")(?![\w.-])")
                for r in roots]
    problems = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        raw = path.read_bytes()
        if any(t.encode() in raw for t in tokens):
            problems.append(f"{rel}: an access token")
        texts = _texts(path)
        hits = [root for root, pat in zip(roots, patterns) if any(pat.search(t) for t in texts)]
        if hits:
            problems.append(f"{rel}: a local path ({hits[0]})")  # shown on this machine only
    return problems


def check_folder(folder: Path, extra_roots: list[str | Path] = ()) -> None:
    problems = find_leaks(folder, local_roots(*extra_roots), secrets())
    if problems:
        raise UserError("refusing to publish, private data found: " + "; ".join(problems))
