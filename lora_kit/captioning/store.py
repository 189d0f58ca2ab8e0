"""Where captions live: `.txt`/`.caption` sidecars or an imagefolder `metadata.jsonl`, plus a progress log.

Captions are read with the trainer's rules (lora_kit.data.layout): a sidecar's caption is its first
non-empty line, `extension` first then the other sidecar extension, text decoded the same way. A caption
is written as one line; other lines of a sidecar it replaces are kept after it (training ignores them,
but they are the user's).

Every file is replaced atomically (lora_kit.utils.atomic_write_text: temp file in the same folder +
os.replace, permissions from the umask), so a killed run leaves each caption old or new, never
half-written. The progress log makes a run resumable in every write mode: it is appended one line per
finished image (a single write call; a truncated last line is ignored on reload) and removed when the
run completes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path, PurePosixPath
from typing import Iterable

from lora_kit.captioning.scan import ImageItem, require_dataset_folder
from lora_kit.data.layout import first_line, read_text, sidecar_order
from lora_kit.errors import UserError
from lora_kit.utils import atomic_write_text

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.jsonl"
PROGRESS_FILE = ".lora-kit-caption-progress.jsonl"


def _norm_rel(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).as_posix().removeprefix("./")


class SidecarStore:
    """`image.png` -> `image.txt` (or another extension) beside it, written as soon as it is captioned."""

    def __init__(self, root: Path, extension: str = ".txt"):
        self.root = root
        self.extension = extension

    def path_for(self, item: ImageItem) -> Path:
        return Path(item.path).with_suffix(self.extension)

    def _label(self, p: Path) -> str:
        rel = p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else p.name
        return f"caption file {self.root.name}/{rel}"  # as the scan names it (layout.read_caption)

    def existing(self, item: ImageItem) -> str | None:
        """The caption training reads for this image (layout.read_caption's order), None without one."""
        image = Path(item.path)
        for ext in sidecar_order(self.extension):
            p = image.with_suffix(ext)
            if p.is_file():
                return first_line(read_text(p, self._label(p)))
        return None

    def write(self, item: ImageItem, text: str) -> None:
        p = self.path_for(item)
        rest: list[str] = []
        if p.is_file():  # keep the lines after the caption line (e.g. kohya wildcard alternatives)
            lines = read_text(p, self._label(p)).splitlines()
            first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
            rest = lines[first + 1:] if first is not None and any(ln.strip() for ln in lines[first + 1:]) else []
        atomic_write_text(p, "\n".join([text, *rest]) + "\n")

    def restore(self, item: ImageItem, text: str) -> None:
        """A caption logged by an interrupted run is already on disk (the log is written after it)."""

    def finish(self) -> None:
        """Nothing buffered: sidecars are written one by one."""

    @property
    def target(self) -> str:
        return f"{self.extension} sidecars"


class JsonlStore:
    """`metadata.jsonl` at the dataset root ({"file_name", "text"} per line, datasets' imagefolder format).

    Records of images not captioned now, and extra columns, are kept. New captions are buffered and
    the file is rewritten once at the end (atomically); the progress log carries them until then.
    """

    def __init__(self, root: Path):
        self.root = require_dataset_folder(root)
        self.path = root / METADATA_FILE
        self.records: dict[str, dict] = {}
        self.dirty = False
        if self.path.is_file():
            for n, line in enumerate(read_text(self.path, METADATA_FILE).splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    self.records[_norm_rel(rec["file_name"])] = rec
                except (ValueError, KeyError, TypeError) as exc:
                    raise UserError(f"{self.path}:{n}: not an imagefolder metadata line ({exc})") from None

    def adopt(self, items: Iterable[ImageItem]) -> int:
        """Copy the sidecar caption of each image that has no record yet (the scan read it), so switching
        to metadata.jsonl loses no caption: once the file exists the trainer reads it, not the sidecars."""
        n = 0
        for item in items:
            if item.rel not in self.records and item.caption:
                self.set(item.rel, item.caption)
                n += 1
        if n:
            log.info("%d sidecar caption(s) copied into %s", n, METADATA_FILE)
        return n

    def existing(self, item: ImageItem) -> str | None:
        rec = self.records.get(item.rel)
        return None if rec is None or rec.get("text") is None else str(rec["text"]).strip()

    def write(self, item: ImageItem, text: str) -> None:
        self.set(item.rel, text)

    def restore(self, item: ImageItem, text: str) -> None:
        self.set(item.rel, text)  # logged by an interrupted run, maybe not yet in metadata.jsonl

    def set(self, rel: str, text: str) -> None:
        rec = self.records.setdefault(rel, {"file_name": rel})
        if rec.get("text") != text:
            rec["text"] = text
            self.dirty = True

    def finish(self) -> None:
        if not self.dirty:
            return
        lines = (json.dumps(rec, ensure_ascii=False) for rec in self.records.values())
        atomic_write_text(self.path, "\n".join(lines) + "\n")
        self.dirty = False

    @property
    def target(self) -> str:
        return METADATA_FILE


def make_store(root: Path, output: str, extension: str) -> SidecarStore | JsonlStore:
    if output == "jsonl":
        return JsonlStore(root)
    if output == "txt":
        return SidecarStore(root, extension)
    raise UserError(f"unknown caption format {output!r} (txt or jsonl)")


def run_signature(parts: dict) -> str:
    """A short hash of what decides the captions; a progress log of another configuration is not reused."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class ProgressLog:
    """Append-only record of the images a run finished: {"file_name", "text"} per line after a header."""

    def __init__(self, root: Path, signature: str):
        self.path = root / PROGRESS_FILE
        self.signature = signature
        self._file = None

    def load(self) -> dict[str, str]:
        """Captions finished by an interrupted run of the same configuration; {} otherwise."""
        if not self.path.is_file():
            return {}
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except ValueError:
            header = {}
        if header.get("signature") != self.signature:
            log.warning("ignoring %s: it was left by a run with other settings", self.path.name)
            return {}
        done = {}
        for line in lines[1:]:
            try:
                rec = json.loads(line)
                done[rec["file_name"]] = rec["text"]
            except (ValueError, KeyError, TypeError):
                continue  # the last line of a killed run may be cut short
        return done

    def start(self, done: dict[str, str]) -> None:
        """Rewrite the log with the header and the records carried over, then append from there."""
        lines = [json.dumps({"lora_kit_caption_progress": 1, "signature": self.signature})]
        lines += [json.dumps({"file_name": k, "text": v}, ensure_ascii=False) for k, v in done.items()]
        atomic_write_text(self.path, "\n".join(lines) + "\n")
        self._file = open(self.path, "a", encoding="utf-8")

    def add(self, rel: str, text: str) -> None:
        # One write of one whole line; flushed so that a killed process loses at most this line.
        self._file.write(json.dumps({"file_name": rel, "text": text}, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self, complete: bool) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if complete:
            self.path.unlink(missing_ok=True)


def all_captions(store: SidecarStore | JsonlStore, items: Iterable[ImageItem]) -> list[str]:
    """The captions the dataset has now, for the tag frequency table."""
    return [c for c in (store.existing(it) for it in items) if c]
