"""`lora-kit publish RUN_DIR --hub REPO_ID | --civitai OUT.zip`: everything comes from the run folder."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from lora_kit.errors import UserError


def _weight(text: str) -> float:
    """--weight: a finite number (nan or inf would be written into the card and the Civitai metadata)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished training run folder (has summary.json)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--hub", metavar="REPO_ID", help="Hugging Face Hub model repo, e.g. me/my-lora")
    target.add_argument("--civitai", metavar="OUT.zip", help="write a Civitai upload bundle")
    hub = parser.add_argument_group("Hub options")
    hub.add_argument("--private", action="store_true", help="create the repo private")
    hub.add_argument("--revision", metavar="BRANCH", help="upload to this branch (created from main if missing)")
    hub.add_argument("--dry-run", action="store_true", help="write the repo folder and list it; no network")
    hub.add_argument("--out", metavar="FOLDER", help="where to assemble the repo folder (default RUN_DIR/publish/hub)")
    meta = parser.add_argument_group("overrides (default: from the run)")
    meta.add_argument("--title", help="model name shown on the card / Civitai")
    meta.add_argument("--license", help="license id, e.g. openrail++ or creativeml-openrail-m")
    meta.add_argument("--base-model", metavar="HUB_ID", help="Hub id of the base model, when trained from a local copy")
    meta.add_argument("--weight", type=_weight, help="recommended LoRA weight (default: from the sample grid, else 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT.zip or non-empty --out folder")


def run(args: argparse.Namespace) -> int:
    # lazy: the publish modules import torch (via lora_kit.adapters.io); `lora-kit publish --help` does not
    from lora_kit.publish.rundir import load_run
    from lora_kit.publish.settings import describe

    if args.civitai and (args.private or args.revision or args.dry_run or args.out):
        raise UserError("--private, --revision, --dry-run and --out apply to --hub only")
    run_dir = load_run(args.run_dir)
    details = describe(run_dir, title=args.title, license=args.license, base_model=args.base_model, weight=args.weight)
    if args.civitai:
        return _civitai(run_dir, details, args)
    return _hub(run_dir, details, args)


def _civitai(run_dir, details, args) -> int:
    from lora_kit.publish.civitai import build_civitai_bundle  # lazy: torch, kept out of --help

    names = build_civitai_bundle(run_dir, details, args.civitai, overwrite=args.overwrite)
    print(f"wrote {args.civitai} ({len(names)} files):")
    for name in names:
        print(f"  {name}")
    print("upload it in Civitai's wizard; civitai-upload.txt in the zip lists what to paste")
    return 0


def _hub(run_dir, details, args) -> int:
    from lora_kit.publish import hub  # lazy: torch, kept out of --help

    repo_id = hub.check_repo_id(args.hub)
    # The default folder is lora-kit's own output inside the run, so it is rebuilt on every publish.
    out = Path(args.out) if args.out else hub.default_folder(run_dir)
    folder = hub.assemble_hub_folder(run_dir, details, repo_id, out, replace=args.overwrite or not args.out)
    files = hub.list_files(folder)
    where = f"{hub.hub_endpoint()}/{repo_id}"
    visibility = "private" if args.private else "default visibility"
    print(f"{'would upload' if args.dry_run else 'uploading'} to {where} "
          f"(branch {args.revision or 'main'}, {visibility}) from {folder}:")
    for rel, size in files:
        print(f"  {size:>12,d}  {rel}")
    print(f"  {sum(s for _, s in files):>12,d}  total, {len(files)} files")
    if args.dry_run:
        return 0
    url = hub.upload(folder, repo_id, private=args.private, revision=args.revision)
    print(f"uploaded: {url}")
    return 0
