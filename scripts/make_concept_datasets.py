#!/usr/bin/env python
"""Rebuild the shipped concept datasets (datasets/shapes-star, shapes-stripes and the prior shapes-world).

    python scripts/make_concept_datasets.py --overwrite          # refresh the checked-in folders
    python scripts/make_concept_datasets.py --out /tmp/check     # write elsewhere, e.g. to compare

The output is deterministic (seeded scenes, PNGs without timestamps); the definitions live in
lora_kit/world/concepts.py and tests/test_world.py checks the checked-in folders still match them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from lora_kit.errors import UserError  # noqa: E402
from lora_kit.paths import datasets_dir  # noqa: E402
from lora_kit.world.concepts import CONCEPTS, write_concept_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="parent folder (default: the repository's datasets/)")
    parser.add_argument("--only", choices=sorted(CONCEPTS), action="append", help="build only this dataset (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace dataset folders that already exist")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else datasets_dir()
    try:
        for name in args.only or sorted(CONCEPTS):
            concept = CONCEPTS[name]
            path = write_concept_dataset(concept, out, overwrite=args.overwrite)
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            print(f"{path}: {concept.count} images + captions in {concept.subset}/, {size / 1024:.1f} KiB, " + (f"trigger {concept.trigger!r}" if concept.trigger else "no trigger word (prior images)"))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
