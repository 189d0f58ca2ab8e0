"""Helpers for training tests: run the real trainer in-process on the tiny model."""

from __future__ import annotations

from pathlib import Path

from lora_kit.config.load import load_recipe

BASE = [
    "train.max_steps=4",
    "save.every_n_steps=0",
    "log.tensorboard=false",
    "dataset.caption_dropout=0.0",
]


def reset_accelerate() -> None:
    """accelerate keeps process-wide singletons; tests that build several Accelerators reset them."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def run_training(out: Path, overrides: list[str] = (), resume: str | None = None, stop_after: int = 0, recipe: str = "tiny-smoke"):
    """Train like `lora-kit train` does and return the finished trainer (files written when complete)."""
    from lora_kit.train.recipe import LoraTrainer

    reset_accelerate()
    r = load_recipe(recipe, BASE + [f'output_dir="{out}"'] + list(overrides))
    t = LoraTrainer(r, resume=resume, stop_after=stop_after)
    t.setup()
    t.train()
    if t.global_step >= t.total_steps:
        t.files = t.save()
    t.cleanup()
    return t
