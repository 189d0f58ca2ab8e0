"""`lora-kit train RECIPE [section.key=value ...] [--resume latest|PATH]`.

Also what `accelerate launch -m lora_kit train RECIPE` runs in every process.
"""

from __future__ import annotations

import dataclasses

from lora_kit.config.load import load_recipe
from lora_kit.errors import UserError


def add_arguments(p) -> None:
    p.add_argument("recipe", help="recipe TOML file, or the name of a shipped recipe (tiny-smoke, sd15-style, ...)")
    p.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.max_steps=100 network.rank=8")
    p.add_argument("--resume", metavar="latest|PATH", help="continue exactly from a checkpoint of this run")
    p.add_argument("--output-dir", help="run directory (overrides output_dir in the recipe)")
    p.add_argument("--stop-after", type=int, default=0, metavar="N",
                   help="save a checkpoint and stop after N optimizer steps of this invocation (resume later)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an output folder that holds another run's checkpoints or adapter files")
    p.add_argument("--force-resume", action="store_true",
                   help="resume although the batch/bucket/dataset/seed setup changed since the checkpoint")


def run(args) -> int:
    if args.stop_after < 0:
        raise UserError(f"--stop-after {args.stop_after}: expected 0 (run to the end) or a number of steps >= 1")
    if args.force_resume and not args.resume:
        raise UserError("--force-resume needs --resume latest|PATH")
    if args.overwrite and args.resume:
        raise UserError("--overwrite starts a new run and --resume continues one: pass only one of them")
    recipe = load_recipe(args.recipe, list(args.overrides))
    if args.output_dir:  # a typed value, not a quoted override string
        recipe = dataclasses.replace(recipe, output_dir=args.output_dir.replace("{name}", recipe.name))
    # Imported here: preflight and the trainer pull in torch and diffusers, which `lora-kit train --help` does not need.
    from lora_kit.config.preflight import check_before_training
    from lora_kit.train.recipe import LoraTrainer

    check_before_training(recipe)  # paths, output locations, model-dependent values: before the model loads
    trainer = LoraTrainer(recipe, resume=args.resume, stop_after=args.stop_after, overwrite=args.overwrite,
                          force_resume=args.force_resume)
    trainer.setup()
    trainer.train()
    if trainer.global_step >= trainer.total_steps:
        files = trainer.save()
        if trainer.accelerator.is_main_process:
            print(f"done: {trainer.global_step} steps, loss {trainer.last_loss:.4f}")
            for kind, path in files.items():
                print(f"  {kind:10s} {path}")
    trainer.cleanup()
    return 0

