"""`lora-kit demo`'s arguments; the demo itself (lora_kit.world.demo) is imported only when it runs."""

from __future__ import annotations

import argparse


def _count(least: int):
    """An argparse type: an integer of at least `least`, refused at once (not after minutes of training)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected a number >= {least}, got {value}")
        return value

    return parse


def add_arguments(p) -> None:
    p.add_argument("--style", action="store_true", help="learn the stripes style instead of the star subject")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--steps", type=_count(0), default=0, help="training steps (default: the recipe's)")
    p.add_argument("--seeds", type=_count(1), default=5, help="seeds per prompt in the grid (5: a rate over 20 images, one image = 5 points)")
    # 12, not the world's 20: measured on a star and a checkerboard LoRA, the same rates at every weight (star 95-100 %,
    # checker 100 %, no bleed, no drift) in 60 % of the grid time; at 8 the plain prompts' colours slipped (docs/benchmarks.md)
    p.add_argument("--sample-steps", type=_count(1), default=12, help="sampler steps per grid cell (default 12)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous demo in --out (never a folder of other files)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of the demo recipe (repeatable), e.g. --set optimizer.lr=5e-4")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run: 2 training steps, 1 seed, 2 sampling steps, 2 prompts")


def run(args) -> int:
    # Imported here: the demo pulls in torch, diffusers and the trainer, which `lora-kit demo --help` does not need.
    from lora_kit.world import demo

    return demo.run(args)
