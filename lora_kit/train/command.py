"""`lora-kit train RECIPE [section.key=value ...] [--resume latest|PATH]`.

Also what `accelerate launch -m lora_kit train RECIPE` runs in every process.
"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("recipe", help="recipe TOML file, or the name of a shipped recipe (tiny-smoke, sd15-style, ...)")
    p.add_argument("overrides", nargs="*", help="recipe overrides, e.g. train.max_steps=100 network.rank=8")
    p.add_argument("--resume", metavar="latest|PATH", help="continue exactly from a checkpoint of this run")
    p.add_argument("--output-dir", help="run directory (overrides output_dir in the recipe)")
    p.add_argument("--stop-after", type=int, default=0, metavar="N",
                   help="save a checkpoint and stop after N optimizer steps of this invocation (resume later)")


def run(args) -> int:
    from lora_kit.config.load import load_recipe
    from lora_kit.train.recipe import LoraTrainer

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={_toml_str(args.output_dir)}")
    recipe = load_recipe(args.recipe, overrides)
    from lora_kit.config.checks import check_paths

    check_paths(recipe)
    trainer = LoraTrainer(recipe, resume=args.resume, stop_after=args.stop_after)
    trainer.setup()
    trainer.train()
    if trainer.global_step >= trainer.total_steps:
        files = trainer.save()
        if trainer.accelerator.is_main_process:
            print(f"done: {trainer.global_step} steps, loss {getattr(trainer, 'last_loss', float('nan')):.4f}")
            for kind, path in files.items():
                print(f"  {kind:10s} {path}")
    trainer.cleanup()
    return 0


def _toml_str(s: str) -> str:
    import json

    return json.dumps(s)
