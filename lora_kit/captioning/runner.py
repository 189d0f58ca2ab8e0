"""Captioning a dataset: pick the images to do, caption them in batches, edit, write, summarise.

Resumable by construction: each image's caption is written (sidecar) or logged (jsonl) as soon as its
batch finishes, and the progress log lists what is done, so a killed run started again with the same
settings continues where it stopped and captions nothing twice, in skip, append or overwrite mode.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from lora_kit.captioning.base import Caption, Captioner
from lora_kit.captioning.edit import EditRules, edit_tags, merge_tags
from lora_kit.captioning.scan import ImageItem, scan_dataset
from lora_kit.captioning.store import ProgressLog, all_captions, make_store, run_signature
from lora_kit.data.images import SkipCounter, try_load_image
from lora_kit.data.layout import is_image_file
from lora_kit.data.tags import join_tags, split_tags, tag_frequency
from lora_kit.errors import UserError

log = logging.getLogger(__name__)

MODES = ("skip", "append", "overwrite")
GIVE_UP_AFTER = 10  # failures before any success: the captioner is broken, not the images


@dataclass
class CaptionOptions:
    """How captions are written. mode: skip (default: keep existing captions), append or overwrite."""

    rules: EditRules = field(default_factory=EditRules)
    mode: str = "skip"
    output: str = "txt"  # txt: sidecar files; jsonl: metadata.jsonl at the dataset root
    extension: str = ".txt"
    separator: str = ","
    batch_size: int = 8
    max_images: int | None = None  # caption at most this many now; the next run continues
    dry_run: bool = False  # caption up to max_images (8 if unset) and write nothing
    workers: int = 4  # image decoding threads (Pillow releases the GIL while decoding)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"unknown write mode {self.mode!r}: one of {', '.join(MODES)}")
        if self.batch_size < 1:
            raise UserError("batch size must be >= 1")
        if not self.extension.startswith("."):
            self.extension = "." + self.extension
        if is_image_file(self.extension) or self.extension in (".", ".jsonl"):
            raise UserError(f"{self.extension!r} cannot be a caption extension (use .txt or .caption)")


@dataclass
class CaptionReport:
    total: int = 0  # images found
    captioned: int = 0  # written (or edited) by this run; in a dry run, would be
    unchanged: int = 0  # --edit: captions the rules left as they were
    skipped_existing: int = 0  # had a caption and no --append/--overwrite (or no caption, for --edit)
    resumed: int = 0  # finished by an interrupted earlier run
    unreadable: int = 0
    failed: int = 0  # the captioner raised for them; a rerun retries them
    remaining: int = 0  # left for a later run by max_images
    captions: dict[str, str] = field(default_factory=dict)  # rel path -> caption written now
    frequency: dict[str, int] = field(default_factory=dict)  # tags over the dataset's captions
    target: str = ""

    @property
    def complete(self) -> bool:
        return self.remaining == 0 and self.failed == 0


def _signature(kind: str, captioner: Captioner | None, options: CaptionOptions) -> str:
    return run_signature(
        {
            "kind": kind,
            "captioner": getattr(captioner, "name", None),
            "config": getattr(captioner, "config", {}),
            "rules": asdict(options.rules),
            "mode": options.mode,
            "output": options.output,
            "extension": options.extension,
            "separator": options.separator,
        }
    )


def _final_text(caption: Caption, existing: str | None, options: CaptionOptions) -> str:
    tags = edit_tags(caption.as_tags(options.separator), options.rules, caption.scores)
    if options.mode == "append" and existing:
        tags = merge_tags(split_tags(existing, options.separator), tags, options.rules)
    return join_tags(tags, options.separator)


def _call_backend(captioner: Captioner, items: Sequence[ImageItem], images: list, report: CaptionReport) -> list:
    """Captions aligned with items; None where the captioner failed (one warning per image)."""
    try:
        caps = list(captioner.caption(items, images))
        if len(caps) != len(items):
            raise RuntimeError(f"{len(caps)} captions for {len(items)} images")
        return caps
    except UserError:
        raise
    except Exception as exc:
        if len(items) > 1:  # find the bad image instead of losing the whole batch
            return [c for i, im in zip(items, images) for c in _call_backend(captioner, [i], [im], report)]
        log.warning("captioning failed for %s: %s: %s", items[0].rel, type(exc).__name__, exc)
        report.failed += 1
        return [None]


def _loaded_batches(pool: ThreadPoolExecutor, pending: list[ImageItem], size: int, skips: SkipCounter):
    """Yield (batch, readable items, their images); the next batch decodes while this one is captioned."""
    starts = range(0, len(pending), size)

    def submit(i: int) -> list:
        return [pool.submit(try_load_image, it.path, skips) for it in pending[i : i + size]]

    ahead = submit(0) if pending else []
    for n, start in enumerate(starts):
        futures, batch = ahead, pending[start : start + size]
        ahead = submit(starts[n + 1]) if n + 1 < len(starts) else []
        images = [f.result() for f in futures]
        yield batch, [it for it, im in zip(batch, images) if im is not None], [im for im in images if im is not None]


def _scan(root: Path, store, skips: SkipCounter) -> list[ImageItem]:
    """The dataset's images; of several sharing one sidecar (a.png, a.jpg) only the first is kept."""
    items, owners = [], {}
    for item in scan_dataset(root, getattr(store, "extension", ".txt"), skips.skip):
        key = store.path_for(item) if hasattr(store, "path_for") else item.rel
        if key in owners:
            log.warning("%s and %s would share one caption file; only the first is captioned", owners[key], item.rel)
            continue
        owners[key] = item.rel
        items.append(item)
    return items


def _limit(options: CaptionOptions) -> int | None:
    return options.max_images if options.max_images is not None else (8 if options.dry_run else None)


def _select(items, store, done, options: CaptionOptions, report: CaptionReport) -> list[ImageItem]:
    pending = []
    for item in items:
        if item.rel in done:
            report.resumed += 1
            if not options.dry_run:
                store.restore(item, done[item.rel])
        elif options.mode == "skip" and store.existing(item) is not None:
            report.skipped_existing += 1
        else:
            pending.append(item)
    limit = _limit(options)
    if limit is not None and len(pending) > limit:
        report.remaining = len(pending) - limit
        pending = pending[:limit]
    return pending


def caption_dataset(dataset: str | Path, captioner: Captioner, options: CaptionOptions | None = None) -> CaptionReport:
    """Caption every image of `dataset` (recursively) with `captioner`; see CaptionOptions."""
    options = options or CaptionOptions()
    root = Path(dataset)
    store = make_store(root, options.output, options.extension)
    skips = SkipCounter()
    items = _scan(root, store, skips)
    if hasattr(store, "adopt") and not options.dry_run:
        store.adopt(items)  # metadata.jsonl replaces the sidecars for training: carry their captions over
    report = CaptionReport(total=len(items) + skips.count, target=store.target)
    progress = ProgressLog(root, _signature("caption", captioner, options))
    done = {} if options.dry_run else progress.load()
    pending = _select(items, store, done, options, report)
    if not options.dry_run:
        _require_writable(root, [store.path_for(it).parent for it in pending] if hasattr(store, "path_for") else [])
        progress.start(done)
    finished = False
    bar = tqdm(total=len(pending), unit="img", desc=f"caption ({captioner.name})", disable=not options.progress)
    try:
        with ThreadPoolExecutor(max(1, options.workers)) as pool:
            for batch, ok_items, images in _loaded_batches(pool, pending, options.batch_size, skips):
                caps = _call_backend(captioner, ok_items, images, report) if ok_items else []
                for item, cap in zip(ok_items, caps):
                    if cap is not None:
                        _write(item, _final_text(cap, store.existing(item), options), store, progress, options, report)
                bar.update(len(batch))
                if report.failed >= GIVE_UP_AFTER and report.captioned == 0:
                    raise UserError(f"the {captioner.name} captioner failed on the first {report.failed} images "
                                    "(see the warnings above); stopping")
        finished = True
    finally:
        bar.close()
        report.unreadable = skips.count
        if not options.dry_run:
            store.finish()  # also on Ctrl-C: what was captioned is kept
            progress.close(complete=finished and report.complete)
    report.frequency = tag_frequency(report.captions.values() if options.dry_run else all_captions(store, items),
                                     options.separator)
    return report


def _require_writable(root: Path, folders: list[Path]) -> None:
    """One line naming the first folder a caption (or the progress log, at the root) cannot be written in,
    before anything is captioned: not a PermissionError naming a temp file halfway through the run."""
    for folder in dict.fromkeys([root, *folders]):
        if not os.access(folder, os.W_OK | os.X_OK):
            name = "/".join((root.name, *folder.relative_to(root).parts)) if folder.is_relative_to(root) else str(folder)
            raise UserError(f"cannot write captions in {name}: permission denied (read-only folder); nothing was captioned")


def _write(item: ImageItem, text: str, store, progress: ProgressLog, options: CaptionOptions, report: CaptionReport) -> None:
    report.captions[item.rel] = text
    report.captioned += 1  # in a dry run: would be written
    if not options.dry_run:
        store.write(item, text)
        progress.add(item.rel, text)


def edit_dataset(dataset: str | Path, options: CaptionOptions | None = None) -> CaptionReport:
    """Apply options.rules to the existing captions of `dataset` (sidecars or metadata.jsonl).

    Images without a caption are left alone. Only captions the rules change are rewritten.
    """
    options = options or CaptionOptions()
    root = Path(dataset)
    store = make_store(root, options.output, options.extension)
    skips = SkipCounter()
    items = _scan(root, store, skips)
    report = CaptionReport(total=len(items) + skips.count, target=store.target, unreadable=skips.count)
    progress = ProgressLog(root, _signature("edit", None, options))
    done = {} if options.dry_run else progress.load()
    if not options.dry_run:
        progress.start(done)
    finished = False
    try:
        for item in tqdm(items, unit="img", desc="edit captions", disable=not options.progress):
            _edit_one(item, store, progress, done, options, report)
        finished = True
    finally:
        if not options.dry_run:
            store.finish()
            progress.close(complete=finished and report.complete)
    report.frequency = tag_frequency(report.captions.values() if options.dry_run else all_captions(store, items),
                                     options.separator)
    return report


def _edit_one(item: ImageItem, store, progress: ProgressLog, done: dict, options: CaptionOptions, report: CaptionReport) -> None:
    if item.rel in done:
        report.resumed += 1
        if not options.dry_run:
            store.restore(item, done[item.rel])
        return
    existing = store.existing(item)
    if existing is None:
        report.skipped_existing += 1
        return
    limit = _limit(options)
    if limit is not None and report.captioned + report.unchanged >= limit:
        report.remaining += 1
        return
    text = join_tags(edit_tags(split_tags(existing, options.separator), options.rules), options.separator)
    if text != existing:
        _write(item, text, store, progress, options, report)
        return
    report.unchanged += 1
    if options.dry_run:
        report.captions[item.rel] = text
