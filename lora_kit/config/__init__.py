"""Recipes: typed schema (schema.py), TOML loading/overrides (load.py), cross-field checks (checks.py)."""

from lora_kit.config.load import load_recipe, recipe_from_dict, dump_recipe, write_resolved  # noqa: F401
from lora_kit.config.schema import Recipe  # noqa: F401
