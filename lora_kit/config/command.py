"""`lora-kit recipe FILE [section.key=value ...]`: validate and print the resolved recipe."""

from __future__ import annotations

from lora_kit.config.load import dump_recipe, load_recipe


def add_arguments(p) -> None:
    p.add_argument("recipe", help="recipe TOML file or the name of a shipped recipe (e.g. tiny-smoke)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")


def run(args) -> int:
    print(dump_recipe(load_recipe(args.recipe, args.overrides)), end="")
    return 0
