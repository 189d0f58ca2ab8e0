"""`lora-kit caption DATASET --captioner NAME | --edit [options]`: caption a dataset or edit its captions."""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

from lora_kit.captioning.backends.clip_tags import ClipTagsCaptioner
from lora_kit.captioning.backends.simple import TemplateCaptioner
from lora_kit.captioning.backends.vlm import TransformersCaptioner
from lora_kit.captioning.backends.wd14 import TaggerCaptioner
from lora_kit.captioning.base import available_captioners, create_captioner
from lora_kit.captioning.edit import EditRules
from lora_kit.captioning.runner import CaptionOptions, CaptionReport, caption_dataset, edit_dataset
from lora_kit.data.tags import split_tags
from lora_kit.errors import UserError
from lora_kit.paths import is_builtin, resolve_dataset_path


def _default(cls, param: str):
    """A backend's own default for `param` (its constructor), so the help text cannot drift from it."""
    return inspect.signature(cls.__init__).parameters[param].default


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset folder; images are found recursively (kohya N_name subfolders too)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--captioner", metavar="NAME", help=f"caption with this backend: {', '.join(available_captioners())}")
    what.add_argument("--edit", action="store_true", help="only apply the editing options to existing captions")

    b = p.add_argument_group("captioner options")
    b.add_argument("--model", help="local folder or Hub id (transformers, tagger, clip-tags); each has a default")
    b.add_argument("--template", help='template: format string with {trigger} {class} {folder} {stem} {words} {repeats} '
                                      f'(default "{TemplateCaptioner.template}")')
    b.add_argument("--prompt", help='transformers: prompt prefix, task token or question (e.g. "a photo of")')
    b.add_argument("--max-new-tokens", type=int, help=f"transformers: longest caption in tokens (default {_default(TransformersCaptioner, 'max_new_tokens')})")
    b.add_argument("--num-beams", type=int, help=f"transformers: beam search width (default {_default(TransformersCaptioner, 'num_beams')})")
    b.add_argument("--trust-remote-code", action="store_true", default=None,
                   help="transformers: run the model repository's own Python code (only for repos you trust)")
    b.add_argument("--general-threshold", type=float, help=f"tagger: general tag threshold (default {_default(TaggerCaptioner, 'general_threshold')})")
    b.add_argument("--character-threshold", type=float, help=f"tagger: character tag threshold (default {_default(TaggerCaptioner, 'character_threshold')})")
    b.add_argument("--rating", action="store_true", default=None, help="tagger: put the top rating tag first")
    b.add_argument("--vocab", help="clip-tags: tag vocabulary file, one tag per line")
    b.add_argument("--top-k", type=int, help="clip-tags: keep the K best tags (default 5 unless --threshold)")
    b.add_argument("--threshold", type=float, help="clip-tags: keep tags with cosine similarity >= this")
    b.add_argument("--clip-template", help=f'clip-tags: text prompt per tag (default "{_default(ClipTagsCaptioner, "clip_template")}")')
    b.add_argument("--device", help="auto (default: GPU when present), cpu, cuda, cuda:1 ...")
    b.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], help="model precision (default: auto)")
    b.add_argument("--batch-size", type=int, default=8, help="images per model call (default 8)")
    b.add_argument("--workers", type=int, default=4, help="image decoding threads (default 4)")

    e = p.add_argument_group("caption editing (after any captioner, or alone with --edit)")
    e.add_argument("--trigger", default="", help="trigger word put first (also {trigger} in templates)")
    e.add_argument("--remove", action="append", default=[], metavar="TAGS",
                   help="tags to remove: comma-separated, or @file with one per line (repeatable)")
    e.add_argument("--remove-regex", action="append", default=[], metavar="PATTERN",
                   help="remove tags this regex matches whole (repeatable)")
    e.add_argument("--replace", action="append", nargs=2, default=[], metavar=("OLD", "NEW"),
                   help="replace a whole tag (repeatable); an empty NEW removes it")
    e.add_argument("--replace-regex", action="append", nargs=2, default=[], metavar=("PATTERN", "REPL"),
                   help="re.sub on every tag (repeatable)")
    e.add_argument("--no-dedupe", action="store_true", help="keep duplicate tags")
    e.add_argument("--sort-by-confidence", action="store_true", help="best-scored tags first (tagger, clip-tags)")
    e.add_argument("--max-tags", type=int, help="keep at most N tags (the trigger not counted)")
    e.add_argument("--underscores-to-spaces", action="store_true", help='"long_hair" -> "long hair"')
    e.add_argument("--lowercase", action="store_true", help="lower-case every tag")
    e.add_argument("--separator", default=",", help='tag separator (default ",", written as ", ")')

    o = p.add_argument_group("output")
    mode = o.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true", help="add the new tags to existing captions")
    mode.add_argument("--overwrite", action="store_true", help="replace existing captions")
    o.add_argument("--format", choices=["txt", "jsonl"], default="txt",
                   help="txt: a sidecar per image (default); jsonl: metadata.jsonl (datasets imagefolder)")
    o.add_argument("--extension", default=".txt", help="sidecar extension: .txt (default) or .caption")
    o.add_argument("--dry-run", action="store_true",
                   help="print the captions of the first --max-images images (default 8), write nothing")
    o.add_argument("--max-images", type=int, metavar="N", help="caption at most N images now; run again to continue")
    o.add_argument("--top-tags", type=int, default=20, help="tags shown in the frequency table (default 20)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")


def _tag_list(values: list[str]) -> tuple[str, ...]:
    tags: list[str] = []
    for value in values:
        if value.startswith("@"):
            path = Path(value[1:])
            if not path.is_file():
                raise UserError(f"tag list file not found: {path}")
            tags += [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
        else:
            tags += split_tags(value)
    return tuple(tags)


def rules_from_args(args: argparse.Namespace) -> EditRules:
    return EditRules(
        trigger=args.trigger,
        remove=_tag_list(args.remove),
        remove_regex=tuple(args.remove_regex),
        replace=tuple((old, new) for old, new in args.replace),
        replace_regex=tuple((pat, repl) for pat, repl in args.replace_regex),
        deduplicate=not args.no_dedupe,
        sort_by_confidence=args.sort_by_confidence,
        max_tags=args.max_tags,
        underscores_to_spaces=args.underscores_to_spaces,
        lowercase=args.lowercase,
    )


def options_from_args(args: argparse.Namespace) -> CaptionOptions:
    return CaptionOptions(
        rules=rules_from_args(args),
        mode="append" if args.append else "overwrite" if args.overwrite else "skip",
        output=args.format,
        extension=args.extension,
        separator=args.separator,
        batch_size=args.batch_size,
        max_images=args.max_images,
        dry_run=args.dry_run,
        workers=args.workers,
        progress=not args.no_progress,
    )


def backend_options(args: argparse.Namespace) -> dict:
    keys = ["model", "template", "trigger", "prompt", "max_new_tokens", "num_beams", "trust_remote_code",
            "general_threshold", "character_threshold", "rating", "vocab", "top_k", "threshold", "clip_template",
            "device", "dtype"]
    opts = {k: getattr(args, k) for k in keys}
    opts["trigger"] = opts["trigger"] or None
    return opts


def format_report(report: CaptionReport, dry_run: bool, top: int = 20, edit: bool = False) -> str:
    verb = "edited" if edit else "captioned"
    lines = []
    if dry_run:
        lines += [f"{rel}: {text}" for rel, text in report.captions.items()]
        lines.append(f"dry run: nothing written ({report.captioned} would be {verb})")
    counts = [f"{report.captioned} {verb}", f"{report.skipped_existing} skipped "
              + ("(no caption)" if edit else "(caption exists)"), f"{report.unreadable} unreadable",
              f"{report.failed} failed"]
    if edit:
        counts.insert(1, f"{report.unchanged} unchanged")
    if report.resumed:
        counts.append(f"{report.resumed} done by the interrupted run")
    if report.remaining and not dry_run:
        counts.append(f"{report.remaining} left for the next run")
    lines.append(f"{report.total} images -> {report.target}: " + ", ".join(counts))
    if report.frequency:
        shown = list(report.frequency.items())[:top]
        lines.append(f"tag frequency ({len(report.frequency)} distinct tags, top {len(shown)}):")
        lines += [f"  {count:6d}  {tag}" for tag, count in shown]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    dataset = resolve_dataset_path(args.dataset)
    options = options_from_args(args)
    if is_builtin(args.dataset) and not options.dry_run:
        raise UserError("builtin datasets are read-only: copy the folder first, or use --dry-run")
    if args.edit:
        report = edit_dataset(dataset, options)
    else:
        captioner = create_captioner(args.captioner, **backend_options(args))
        report = caption_dataset(dataset, captioner, options)
    print(format_report(report, options.dry_run, args.top_tags, edit=args.edit))
    if report.failed:
        print(f"{report.failed} image(s) failed; run the same command again to retry them", file=sys.stderr)
        return 1
    return 0
